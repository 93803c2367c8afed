"""`homie peers` without click: the listing itself, shared by the click command
(homie.cli.net) and the fast path (homie.cli.fast), which serves the everyday
`homie peers [--json]` without importing click at all."""

from __future__ import annotations

from homie.cli.common import checked_home, echo, request, table

FIELDS = ("name", "ip", "port", "ram_free_gb", "ram_total_gb", "cpu_percent_idle", "gpu", "gpu_mem_free_gb", "gpus",
          "status", "timestamp", "last_seen", "slots_free", "max_jobs", "running", "version", "karma", "conflict",
          "instance", "sandbox")


def shown_status(p: dict) -> str:
    """What a peer's state means to a person: one running jobs with no CPU to spare is busy,
    whatever its heartbeat's accept-jobs status says."""
    status = p.get("status") or "?"
    if status == "idle" and (p.get("running") or 0) > 0:
        idle = p.get("cpu_percent_idle")
        if p.get("slots_free") == 0 or (idle is not None and idle < 10):
            status = "busy"
    return status


def show_peers(as_json: bool) -> None:
    """List peers and their resources (`homie peers`)."""
    plist = request("peers")["peers"]
    if as_json:
        import json

        echo(json.dumps([{k: p.get(k) for k in FIELDS} for p in plist], indent=2))
        return
    if not plist:
        echo("no peers found")
        echo("hint: friends must run `homie up` with the same key (homie key); if your network blocks"
             " broadcast (guest Wi-Fi, client isolation), list them under static_peers in"
             f" {checked_home().config}, and see `homie doctor`")
        return
    rows = []
    for p in plist:
        cpu = f'{p["cpu_percent_idle"]:.0f}%' if p.get("cpu_percent_idle") is not None else "?"
        ram = f'{p["ram_free_gb"]:.1f} GB' if p.get("ram_free_gb") is not None else "?"
        gpu = p.get("gpu") or "none"
        status = shown_status(p)
        if p.get("conflict"):
            status += " (name conflict)"
        if p.get("sandbox") == "none":
            status += " (unsandboxed)"
        rows.append([p["name"], p["ip"], cpu, ram, gpu, f"{p.get('running') or 0}", status])
    echo(table(["NAME", "IP", "CPU IDLE", "RAM FREE", "GPU", "JOBS", "STATUS"], rows))
