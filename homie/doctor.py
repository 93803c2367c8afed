"""`homie doctor`: each check says what it found and, when something is wrong, how to fix it."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from homie.control.handlers import Services

SKEW_WARN_S = 5.0


def _f(ok: bool, check: str, finding: str, fix: str | None = None, warn: bool = False) -> dict:
    return {"ok": ok, "check": check, "finding": finding, "fix": fix, "warn": warn}


def offline_findings(home) -> list[dict]:
    """Checks that need no daemon: the key and the config."""
    import os
    import stat

    from homie import keys
    from homie.config import load_config
    from homie.errors import HomieError

    out = []
    try:
        k = keys.load_key(home.key)
        mode = stat.S_IMODE(os.stat(home.key).st_mode)
        out.append(_f(True, "key", f"group key present (group {keys.fingerprint(k)}), file mode {mode:04o}"))
    except HomieError as e:
        out.append(_f(False, "key", str(e), "homie init (new group) or homie join KEY (a friend's group)"))
    try:
        cfg = load_config(home.config)
    except HomieError as e:
        out.append(_f(False, "config", str(e), f"edit {home.config}"))
        return out
    from homie.checks import config_problems

    problems = config_problems(cfg)
    for setting, why in problems:
        out.append(_f(False, "config", f"{home.config}: {setting}: {why}", f"edit {setting} in {home.config}"))
    if not problems:
        out.append(_f(True, "config", f"{home.config if home.config.exists() else 'no config file'}: valid"
                                      f" (name {cfg.name!r}, port {cfg.port}, discovery port {cfg.discovery_port})"))
    return out


def lending_findings(worker) -> list[dict]:
    """Can this machine run friends' jobs, and how safely?"""
    out = []
    sb = worker.sandbox
    if sb.active:
        net = "network on" if worker.config.job_network else "no network (job_network: false)"
        out.append(_f(True, "sandbox", f"jobs run in a bubblewrap sandbox ({net}), each as "
                      + ("a uid of its own" if worker.identities.per_job and worker.identities.root
                         else f"user {worker.identities.fixed.name} in its own user namespace")))
    else:
        out.append(_f(False, "sandbox", f"jobs run unsandboxed: {sb.reason}",
                      "install bubblewrap (apt-get install bubblewrap) and keep `sandbox: auto` or `required`"))
    cg = worker.cgroups
    if cg is not None:
        out.append(_f(bool(cg.parents), "cgroups", cg.describe(),
                      None if cg.parents else "run homie as a systemd unit with Delegate=yes (homie service"
                      " install) to get a cgroup per job", warn=not cg.parents))
    return out


def diagnose(services: Services) -> list[dict]:
    """Checks that need the running daemon: network, peers, clocks."""
    out = []
    disc = services.discovery
    cfg = services.config
    out += lending_findings(services.worker)
    ifaces = disc.interfaces()
    backends = [b.name for b in disc.backends]
    if "udp" in backends:
        if ifaces:
            desc = ", ".join(f"{i['interface']} {i['address']} → broadcast {i['broadcast']}" for i in ifaces)
            out.append(_f(True, "interface", f"discovery broadcasts on {desc} (UDP {cfg.discovery_port})"))
            if len(ifaces) > 1 and not (cfg.interface or cfg.bind):
                out.append(_f(False, "interface", f"{len(ifaces)} interfaces in use; a VPN or docker0 may"
                              " be among them", "pick the LAN one: `interface: wlan0` in config.yaml", warn=True))
        else:
            out.append(_f(False, "interface", "no IPv4 interface with a broadcast address: broadcasts go nowhere",
                          "connect to the LAN, set `interface:`, or use `discovery: [static]` with static_peers"))
    if "static" in backends:
        if cfg.static_peers:
            out.append(_f(True, "static peers", f"heartbeats go to {', '.join(cfg.static_peers)}"))
        else:
            out.append(_f(False, "static peers", "static discovery is on but static_peers is empty:"
                          " no heartbeat is sent to anyone by it", "list friends' addresses under static_peers"))

    answered = disc.probe_round(1.0)
    peers = services.peers.snapshot()
    names_seen = sorted({p.name for p in peers})
    if peers:
        out.append(_f(True, "hearing peers", f"heartbeats arrive here from {len(peers)} peer(s):"
                                             f" {', '.join(names_seen)}"))
    else:
        out.append(_f(False, "hearing peers", "no heartbeats from any peer with this key",
                      "check friends ran `homie up` with the same key (`homie key`); if the network blocks"
                      " broadcast (guest Wi-Fi, client isolation), use static_peers"))
    if peers:
        deaf = sorted({p.name for p in peers} - {n for n, _ in answered})
        if answered and not deaf:
            out.append(_f(True, "heard by peers", f"our probe was heard and answered by {len(answered)} peer(s)"))
        elif answered:
            out.append(_f(False, "heard by peers", f"{', '.join(deaf)} did not answer our probe (we hear them,"
                                                   " they may not hear us)",
                          "a firewall on their side may drop UDP from here; add this machine to their"
                          " static_peers", warn=True))
        else:
            out.append(_f(False, "heard by peers", "no peer answered our probe: they do not hear this machine",
                          f"open UDP {cfg.discovery_port} in this machine's firewall, or add it to their"
                          " static_peers"))

    # The job port of every peer, and our own.
    from homie.errors import HomieError
    from homie.wire.channel import ConnectionClosed

    targets = [("this machine", services.bind_address or "127.0.0.1", cfg.port)]
    targets += [(p.name, p.ip, p.port) for p in peers]
    for name, ip, port in targets:
        t0 = time.monotonic()
        try:
            ch = services.dial.connect(ip, port)
            ch.send("bye")
            ch.close()
            out.append(_f(True, "job port", f"{name} {ip}:{port}: TLS with the group key works"
                                            f" ({(time.monotonic() - t0) * 1000:.0f} ms)"))
        except (ConnectionClosed, HomieError, OSError) as e:
            out.append(_f(False, "job port", f"{name} {ip}:{port}: {e}",
                          f"open TCP {port} in {name}'s firewall" if name != "this machine"
                          else f"is something else on port {port}?"))

    # Clocks: heartbeats outside ±30 s are refused, so say so instead of dropping silently.
    now = time.time()
    for p in peers:
        if p.timestamp:
            skew = float(p.timestamp) - now
            if abs(skew) > SKEW_WARN_S:
                out.append(_f(False, "clock", f"{p.name}'s clock is {skew:+.0f} s off ours",
                              "enable NTP time sync on both machines", warn=True))
    for src, info in list(disc.verifier.skewed.items()):
        if now - info.get("at", 0) < 120:
            out.append(_f(False, "clock", f"heartbeats from {info.get('name') or '?'} ({src}) are refused: its"
                                          f" clock is {info['skew_s']:+.0f} s off ours (limit ±30 s)",
                          "enable NTP time sync on both machines"))
    if not any(f["check"] == "clock" for f in out) and peers:
        out.append(_f(True, "clock", f"peers' clocks agree with ours within {SKEW_WARN_S:g} s"))
    dropped = dict(disc.verifier.dropped)
    if dropped.get("mac") or dropped.get("tag"):
        out.append(_f(True, "other groups", f"ignored heartbeats: {dropped} (other groups or forgeries)"))
    return out
