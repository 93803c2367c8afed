"""The homie command: a thin client of the local daemon (one function per verb).

Keep imports here light: `homie peers` must start about as fast as
`python -c "import click"`. Anything heavy is imported inside the verb that
needs it.
"""

from __future__ import annotations

import json
import os
import sys
import time

import click

from homie import __version__
from homie.errors import EXIT_NO_DAEMON, EXIT_USAGE, HomieError
from homie.fmt import age as _age
from homie.home import Home

ARROW = "→"


def _home(owned: bool = False) -> Home:
    """The home, refused (exit 2) if another user could change it: see Home.check."""
    home = Home()
    try:
        home.check(owned=owned)
    except HomieError as e:
        _fail(e)
    return home


def _fail(e: HomieError) -> None:
    click.echo(f"error: {e}", err=True)
    sys.exit(e.exit_code)


def _client(timeout: float | None = 10.0):
    from homie.control import ControlClient

    return ControlClient(_home(), timeout=timeout)


def _request(t: str, **fields) -> dict:
    try:
        return _client().request(t, **fields)
    except HomieError as e:
        _fail(e)


def _table(headers: list[str], rows: list[list[str]]) -> str:
    """Plain aligned columns (rich would cost more start-up time than the table is worth)."""
    # Columns that are empty in every row mean nothing: drop them.
    keep = [i for i in range(len(headers)) if any(str(r[i]) for r in rows)] or list(range(len(headers)))
    headers = [headers[i] for i in keep]
    rows = [[str(r[i]) for i in keep] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    out = [line(headers), "─" * (sum(widths) + 2 * (len(widths) - 1))]
    out += [line(r) for r in rows]
    return "\n".join(out)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="homie")
def main():
    """Lend idle machines to friends on the same network."""


# -- the group key ---------------------------------------------------------------


@main.command()
@click.option("--name", help="This machine's name as friends see it.")
@click.option("--force", is_flag=True, help="Replace an existing group key.")
def init(name, force):
    """Create a new group: a home and a fresh random key."""
    from homie import keys
    from homie.config import save_config_value

    home = _home()
    try:
        home.ensure()
        if name:
            save_config_value(home.config, "name", name)
        key = keys.generate_key()
        keys.save_key(home.key, key, force=force)
    except HomieError as e:
        _fail(e)
    click.echo(f"created a new group key in {home.key}")
    click.echo(f"group key: {keys.format_key(key)}")
    click.echo("friends join with:")
    click.echo(f"  homie join {keys.format_key(key)}")
    click.echo("anyone with this key can run code on your machine: share it only with people you trust")


@main.command()
@click.argument("key")
@click.option("--force", is_flag=True, help="Replace an existing group key.")
def join(key, force):
    """Join a friend's group with their KEY."""
    from homie import keys

    home = _home()
    try:
        raw = keys.parse_key(key)
        home.ensure()
        keys.save_key(home.key, raw, force=force)
    except HomieError as e:
        _fail(e)
    click.echo(f"joined group {keys.fingerprint(raw)}; key stored in {home.key}")
    if _daemon_running(home):
        click.echo("restart the daemon to use it: homie down && homie up")


@main.command()
def key():
    """Print the group key (to share with a friend)."""
    from homie import keys

    try:
        k = keys.load_key(_home(owned=True).key)
    except HomieError as e:
        _fail(e)
    click.echo(keys.format_key(k))


# -- the daemon --------------------------------------------------------------------


def _daemon_running(home: Home) -> int | None:
    from homie.daemon import daemon_pid

    return daemon_pid(home)


def _overrides(name, port, discovery_port, interface, bind) -> dict:
    return {"name": name, "port": port, "discovery_port": discovery_port, "interface": interface, "bind": bind}


@main.command()
@click.option("--name", help="Name to broadcast (default: config, then host name).")
@click.option("--port", type=str, help="TCP port for jobs (default 5556).")
@click.option("--discovery-port", type=str, help="UDP port for discovery (default 5555).")
@click.option("--interface", help="Network interface to use (e.g. wlan0).")
@click.option("--bind", help="IPv4 address to use (instead of --interface).")
@click.option("--foreground", is_flag=True, help="Stay in the foreground (for systemd/launchd).")
@click.option("--ready-fd", type=int, hidden=True)
def up(name, port, discovery_port, interface, bind, foreground, ready_fd):
    """Start the daemon: discovery and the job server."""
    from homie import keys
    from homie.config import load_config

    home = _home()
    if foreground:
        from homie.daemon import settle_process

        settle_process()  # cwd /: before the daemon opens or imports anything
    try:
        home.ensure()
        config = load_config(home.config, _overrides(name, port, discovery_port, interface, bind))
    except HomieError as e:
        _fail(e)
    pid = _daemon_running(home)
    if pid:
        try:
            st = _client().request("status")
            click.echo(f'homie is already running as "{st["name"]}" (pid {st["pid"]})')
        except HomieError:
            click.echo(f"homie is already running (pid {pid})")
        return
    try:
        key = keys.load_key(home.key)
    except HomieError as e:
        if os.path.lexists(home.key):  # a bad key (or a symlink) is reported, never replaced
            _fail(e)
        key = keys.generate_key()
        keys.save_key(home.key, key)
        click.echo(f"no group key yet: created one in {home.key}")
        click.echo(f"friends join with: homie join {keys.format_key(key)}")
    if foreground:
        from homie import daemon

        sys.exit(daemon.run(home, config, key, foreground=True, ready_fd=ready_fd))
    _start_background(home, config, name, port, discovery_port, interface, bind)


_DAEMON_BOOT = ("import json, sys; sys.path[:] = json.loads(sys.argv.pop(1)); from homie.cli import main;"
                " main(prog_name='homie')")


def _daemon_python() -> list[str]:
    """The interpreter command line for the background daemon.

    `python -m homie` put the current directory first on the daemon's import
    path, so a structlog.py lying there ran as root. -I drops it, the user site
    and every PYTHON* variable; the daemon gets this command's own import path
    instead, so it runs the same homie and plugins (PYTHONPATH included, as for
    this command), minus the current directory and relative entries, unless
    homie itself was imported from there."""
    import json

    import homie

    own = os.path.dirname(os.path.dirname(os.path.abspath(homie.__file__)))
    try:
        here = os.getcwd()
    except OSError:
        here = None  # the directory was removed: nothing there to import
    path = [p for p in sys.path if p == own or (os.path.isabs(p) and os.path.realpath(p) != here)]
    return [sys.executable, "-I", "-c", _DAEMON_BOOT, json.dumps(path)]


def _start_background(home, config, name, port, discovery_port, interface, bind) -> None:
    import select
    import subprocess

    r, w = os.pipe()
    argv = [*_daemon_python(), "up", "--foreground", "--ready-fd", str(w)]
    for flag, value in (("--name", name), ("--port", port), ("--discovery-port", discovery_port),
                        ("--interface", interface), ("--bind", bind)):
        if value is not None:
            argv += [flag, str(value)]
    err_path = home.root / "logs" / "daemon.err"
    from homie.home import open_private

    # cwd /: see _daemon_python(); HOMIE_HOME absolute, as a relative one meant this directory.
    env = {**os.environ, "HOMIE_HOME": str(home.root)}
    try:
        err_fd = open_private(err_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    except OSError as e:
        _fail(HomieError(f"cannot open {err_path}: {e.strerror}"))
    with os.fdopen(err_fd, "ab") as err:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                pass_fds=(w,), start_new_session=True, close_fds=True, cwd="/", env=env)
    os.close(w)
    data = b""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ready, _, _ = select.select([r], [], [], 0.2)
        if ready:
            chunk = os.read(r, 4096)
            if not chunk:
                break
            data += chunk
        elif proc.poll() is not None:
            break
    os.close(r)
    text = data.decode(errors="replace").strip()
    if text.startswith("ok "):
        first, *rest = text.splitlines()
        _, nm, prt = first.split(" ", 2)
        click.echo(f'daemon started, broadcasting as "{nm}"')
        click.echo(f"listening for jobs on :{prt}")
        for line in rest:
            if line.startswith("warn "):
                click.echo(f"warning: {line[5:]}", err=True)
        return
    if text.startswith("already running"):
        click.echo(f"homie is {text}")
        return
    if text.startswith("error: "):
        message, _, code = text.partition("\nexit ")
        click.echo(message, err=True)
        sys.exit(int(code) if code.strip().isdigit() else 1)
    click.echo(f"error: the daemon did not start; see {err_path} and {home.log}", err=True)
    sys.exit(1)


@main.command()
def down():
    """Stop the daemon (says goodbye to peers first)."""
    home = _home()
    pid = _daemon_running(home)
    if not pid:
        click.echo("homie is not running")
        return
    try:
        _client().request("down")
    except HomieError:
        import signal as _signal

        try:
            os.kill(pid, _signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and _daemon_running(home):
        time.sleep(0.05)
    if _daemon_running(home):
        click.echo(f"error: the daemon (pid {pid}) did not stop within 20 s", err=True)
        sys.exit(1)
    click.echo("homie stopped")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(as_json):
    """Is the daemon running? Its name, address, uptime and peer count."""
    try:
        st = _client().request("status")
    except HomieError as e:
        if as_json:
            click.echo(json.dumps({"running": False}))
        else:
            click.echo("homie is not running (start it with: homie up)")
        sys.exit(e.exit_code)
    if as_json:
        click.echo(json.dumps(st, indent=2))
        return
    click.echo(f'homie {st["version"]} is running as "{st["name"]}" (pid {st["pid"]})')
    click.echo(f'  address:   {st["address"]}:{st["port"]} (discovery on UDP {st["discovery_port"]}'
               f' via {", ".join(st["discovery"]) or "nothing"})')
    click.echo(f'  uptime:    {_age(st["uptime"])}')
    click.echo(f'  peers:     {st["peers"]}')
    click.echo(f'  status:    {st["status"]} ({st["jobs_here"]} job(s) here for others, {st["jobs_out"]} sent out)')
    if st.get("sandbox") is not None:
        on = st["sandbox"] != "none"
        click.echo(f'  sandbox:   {"on (bubblewrap)" if on else "OFF: " + st["sandbox_reason"]}')
    click.echo(f'  group:     {st["key_fingerprint"]}')
    click.echo(f'  home:      {st["home"]}')


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def peers(as_json):
    """List peers and their resources."""
    res = _request("peers")
    plist = res["peers"]
    if as_json:
        out = []
        for p in plist:
            d = {k: p.get(k) for k in ("name", "ip", "port", "ram_free_gb", "cpu_percent_idle", "gpu",
                                       "gpu_mem_free_gb", "gpus", "status", "timestamp", "last_seen",
                                       "slots_free", "max_jobs", "running", "version", "karma", "conflict",
                                       "instance", "sandbox")}
            out.append(d)
        click.echo(json.dumps(out, indent=2))
        return
    if not plist:
        click.echo("no peers found")
        click.echo("hint: friends must run `homie up` with the same key (homie key); if your network blocks"
                   " broadcast (guest Wi-Fi, client isolation), list them under static_peers in"
                   " ~/.homie/config.yaml, and see `homie doctor`")
        return
    rows = []
    for p in plist:
        cpu = f'{p["cpu_percent_idle"]:.0f}%' if p.get("cpu_percent_idle") is not None else "?"
        ram = f'{p["ram_free_gb"]:.1f} GB' if p.get("ram_free_gb") is not None else "?"
        gpu = p.get("gpu") or "none"
        status = p.get("status") or "?"
        if p.get("conflict"):
            status += " (name conflict)"
        if p.get("sandbox") == "none":
            status += " (unsandboxed)"
        rows.append([p["name"], p["ip"], cpu, ram, gpu, status])
    click.echo(_table(["NAME", "IP", "CPU", "RAM", "GPU", "STATUS"], rows))


# -- jobs ----------------------------------------------------------------------------


class _Printer:
    """Prefixes each output line with the peer's name; stdout and stderr stay apart."""

    def __init__(self, tag: str):
        self.tag = tag
        self.partial = {1: b"", 2: b""}

    def feed(self, stream: int, data: bytes) -> None:
        buf = self.partial[stream] + data
        lines = buf.split(b"\n")
        self.partial[stream] = lines.pop()
        if lines:
            out = sys.stdout if stream == 1 else sys.stderr
            prefix = f"[{self.tag}] ".encode()
            out.buffer.write(b"".join(prefix + ln + b"\n" for ln in lines))
            out.flush()

    def flush(self) -> None:
        for stream in (1, 2):
            if self.partial[stream]:
                self.feed(stream, b"\n")


def _deliver(results: list[str], src_dir: str, out_dir: str) -> list[str]:
    """Put fetched results into out_dir, each appearing whole under its final name."""
    import shutil

    saved = []
    for rel in results:
        src = os.path.join(src_dir, rel)
        dst = os.path.join(out_dir, rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        tmp = os.path.join(os.path.dirname(dst), f".{os.path.basename(dst)}.homie-tmp")
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copy2(src, tmp)
        os.replace(tmp, dst)
        saved.append(dst)
    return saved


def _check_out_dir(out_dir: str) -> None:
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        raise HomieError(f"cannot create the results directory {out_dir}: {e.strerror}", EXIT_USAGE) from None
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise HomieError(f"the results directory {out_dir} is not writable", EXIT_USAGE)


class _Progress:
    """A rich progress bar for big transfers, only on a terminal."""

    THRESHOLD = 4 << 20

    def __init__(self):
        self.bar = None
        self.task = None
        self.phase = None

    def update(self, ev) -> None:
        if not sys.stderr.isatty() or ev["total"] < self.THRESHOLD:
            return
        if self.phase != ev["phase"]:
            self.close()
            from rich.progress import (BarColumn, DownloadColumn, Progress, TransferSpeedColumn)

            self.bar = Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                                TransferSpeedColumn(), transient=True)
            self.bar.start()
            self.task = self.bar.add_task(ev["phase"], total=ev["total"])
            self.phase = ev["phase"]
        self.bar.update(self.task, completed=ev["done"])

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
            self.phase = None


def _follow_stream(events, out_dir: str | None, quiet_end: bool = False, tag: str | None = None) -> int:
    """Print a job's events and output; return the exit code for the shell."""
    from homie import protocol

    printer = None
    progress = _Progress()
    job_id = None
    state = {"interrupts": 0, "job_id": None}
    _install_interrupt(state)
    for ev in events:
        if isinstance(ev, protocol.Output):
            if printer is None:
                printer = _Printer(tag or "?")
            printer.feed(ev.stream, ev.data)
            continue
        if not isinstance(ev, protocol.Message):
            continue
        if ev.t == "reply":
            progress.close()
            if printer:
                printer.flush()
            return _finish_run(ev.body, out_dir, quiet_end)
        kind = ev.get("kind")
        if kind == "job":
            job_id = ev["job_id"]
            state["job_id"] = job_id
        elif kind == "queued":
            click.echo(f"{ARROW} queued: {ev['why']}", err=True)
        elif kind == "sending":
            size = ev.get("bytes") or 0
            extra = f" ({ev['files']} files, {_size(size)})" if size >= 10 << 20 or (ev.get("files") or 0) > 20 else ""
            click.echo(f"{ARROW} sending to {ev['peer']} ({ev['via']}){extra}")
            printer = _Printer(tag or ev["peer"])
        elif kind == "started":
            if printer is None or printer.tag != (tag or ev["peer"]):
                printer = _Printer(tag or ev["peer"])
            click.echo(f"{ARROW} job started: {ev['job_id']}")
        elif kind == "progress":
            progress.update(ev)
        elif kind == "fetching":
            pass
    return EXIT_NO_DAEMON


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _finish_run(end: dict, out_dir: str | None, quiet: bool) -> int:
    state = end["state"]
    code = end.get("exit_code")
    if state == "done":
        sig = end.get("signal")
        if end.get("reason"):
            click.echo(f"{ARROW} job {end['reason']}", err=True)
        elif sig:
            click.echo(f"{ARROW} job killed by signal {sig}", err=True)
        elif end.get("code"):
            click.echo(f"{ARROW} job failed with exit code {end['code']}", err=True)
        else:
            click.echo(f"{ARROW} job complete")
        if end.get("results") and out_dir is not None:
            try:
                saved = _deliver(end["results"], end["results_dir"], out_dir)
            except OSError as e:
                click.echo(f"error: cannot save results into {out_dir}: {e.strerror or e}", err=True)
                return 72
            for p in saved:
                click.echo(f"{ARROW} saved: {os.path.relpath(p)}")
        return code if code is not None else 73
    if not end.get("terminal", True):
        return 0
    click.echo(f"{ARROW} job {state}: {end.get('message') or end.get('reason') or ''}".rstrip(": "), err=True)
    return code if code is not None else 1


def _install_interrupt(state: dict) -> None:
    """Ctrl-C: the first interrupts the remote job, a second kills it."""
    import signal as _signal
    import threading

    def send(sig):
        try:
            _client().request("kill", job_id=state["job_id"], sig=int(sig))
        except HomieError as e:
            click.echo(f"{ARROW} {e}", err=True)

    def handler(signum, frame):
        state["interrupts"] += 1
        if not state["job_id"]:
            raise KeyboardInterrupt
        n = state["interrupts"]
        if n == 1:
            click.echo(f"\n{ARROW} interrupting job {state['job_id']} (Ctrl-C again to kill it)", err=True)
            threading.Thread(target=send, args=(_signal.SIGINT,), daemon=True).start()
        elif n == 2:
            click.echo(f"\n{ARROW} killing job {state['job_id']}", err=True)
            threading.Thread(target=send, args=(_signal.SIGKILL,), daemon=True).start()
        else:
            click.echo(f"\n{ARROW} detached; the job goes on: homie attach {state['job_id']}", err=True)
            os._exit(130)

    _signal.signal(_signal.SIGINT, handler)


@main.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("-n", "--peer", help="Run on this peer (by name; your own name runs it here).")
@click.option("-f", "--file", "files", multiple=True, help="Also send FILE (repeatable; globs allowed).")
@click.option("-d", "--dir", "directory", help="Send this whole project directory (honours .gitignore/.homieignore).")
@click.option("-o", "--output", "out_dir", default="results", show_default=True, help="Where result files go.")
@click.option("--gpu", is_flag=True, help="Run on a peer with a free GPU.")
@click.option("--executor", help="Executor on the worker (subprocess, venv, ...; default auto).")
@click.option("--scheduler", help="Scheduler choosing the peer (default from config).")
@click.option("--detach", is_flag=True, help="Return at once with the job id; follow it with homie attach.")
@click.option("--explain", is_flag=True, help="Only say which peers could take the job, and why not.")
@click.option("--json", "as_json", is_flag=True, help="With --detach or --explain: machine-readable output.")
@click.argument("script")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def run(peer, files, directory, out_dir, gpu, executor, scheduler, detach, explain, as_json, script, args):
    """Run SCRIPT [ARGS]... on the best idle peer; output streams back live.

    Everything after SCRIPT is passed to the script untouched.
    """
    try:
        if not os.path.isfile(script):
            raise HomieError(f"script not found: {script}", EXIT_USAGE)
        if not explain and not detach:
            _check_out_dir(out_dir)
        req = dict(script=os.path.abspath(script), args=list(args), cwd=os.getcwd(), files=list(files),
                   directory=directory, peer=peer, gpu=gpu, executor=executor, scheduler=scheduler,
                   detach=detach, explain=explain)
        client = _client(timeout=None)
        if explain:
            res = client.request("run", **req)
            if as_json:
                click.echo(json.dumps(res, indent=2))
                return
            for p in res["peers"]:
                mark = "eligible" if p["eligible"] else "not eligible: " + "; ".join(p["reasons"])
                who = p["name"] + (" (this machine)" if p["local"] else "")
                click.echo(f"{who:24} {p['ip']:16} {mark}")
            click.echo(f"{ARROW} would run on {res['chosen']}" if res["chosen"] else f"{ARROW} the job would wait")
            return
        if detach:
            events = client.stream("run", **req)
            job_id = None
            for ev in events:
                if getattr(ev, "t", None) == "reply":
                    job_id = ev["job_id"]
            click.echo(json.dumps({"job_id": job_id}) if as_json else job_id)
            return
        code = _follow_stream(client.stream("run", **req), out_dir)
    except HomieError as e:
        _fail(e)
    sys.exit(code)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("-a", "--all", "show_all", is_flag=True, help="Include finished jobs.")
def ps(as_json, show_all):
    """Jobs sent from here, and jobs running here for others."""
    res = _request("ps", all=show_all)
    if as_json:
        click.echo(json.dumps({"sent": res["jobs"], "here": res["here"]}, indent=2))
        return
    now = res["now"]
    if not res["jobs"] and not res["here"]:
        click.echo("no jobs" + ("" if show_all else " running (homie ps --all shows finished ones)"))
        return
    if res["jobs"]:
        rows = []
        for j in res["jobs"]:
            status = j["status"]
            if status == "queued" and j.get("why"):
                status = f"queued ({j['why']})"
            elif j["status"] in ("done",) and j.get("exit_code") not in (None, 0):
                status = f"exit {j['exit_code']}"
            rows.append([j["job_id"], j.get("peer") or "", " ".join([os.path.basename(j["script"] or "?"),
                         *j["args"]])[:40], status, _age(now - j["created"])])
        click.echo(_table(["ID", "PEER", "SCRIPT", "STATUS", "AGE"], rows))
    if res["here"]:
        if res["jobs"]:
            click.echo()
        rows = [[j["job_id"], j["from"], " ".join([j["script"], *j["args"]])[:40], j["status"],
                 _age(now - j["created"])] for j in res["here"]]
        click.echo(_table(["ID", "FROM", "SCRIPT", "STATUS", "AGE"], rows))


@main.command()
@click.argument("job_id")
@click.option("-s", "--signal", "sig", default="KILL", show_default=True, help="Signal to send (INT, TERM, KILL).")
def kill(job_id, sig):
    """Kill a job (its whole process tree), wherever it runs."""
    from homie.control import signal_number

    try:
        num = signal_number(sig)
    except (AttributeError, ValueError):
        _fail(HomieError(f"unknown signal {sig!r}", EXIT_USAGE))
    res = _request("kill", job_id=job_id, sig=num)
    click.echo(res["message"])


@main.command()
@click.argument("job_id")
@click.option("-o", "--output", "out_dir", default="results", show_default=True, help="Where result files go.")
def attach(job_id, out_dir):
    """Follow a job live, with its earlier output first."""
    try:
        code = _follow_stream(_client(timeout=None).stream("follow", job_id=job_id, live=True), out_dir,
                              tag=None)
    except HomieError as e:
        _fail(e)
    sys.exit(code)


@main.command()
@click.argument("job_id")
@click.option("-f", "--follow", is_flag=True, help="Keep following until the job ends.")
def logs(job_id, follow):
    """Print a job's output so far."""
    from homie import protocol

    try:
        printer = None
        for ev in _client(timeout=None).stream("follow", job_id=job_id, live=follow):
            if isinstance(ev, protocol.Output):
                out = sys.stdout if ev.stream == 1 else sys.stderr
                out.buffer.write(ev.data)
                out.flush()
            elif getattr(ev, "t", None) == "reply":
                printer = ev.body
        if printer and printer.get("terminal") and printer.get("state") != "done":
            click.echo(f"{ARROW} job {printer['state']}: {printer.get('message') or ''}", err=True)
    except HomieError as e:
        _fail(e)


@main.command()
@click.argument("job_id")
@click.option("-o", "--output", "out_dir", default="results", show_default=True, help="Where result files go.")
def results(job_id, out_dir):
    """Fetch a finished job's result files."""
    try:
        res = _client().request("get_results", job_id=job_id)
        _check_out_dir(out_dir)
        for p in _deliver(res["results"], res["results_dir"], out_dir):
            click.echo(f"{ARROW} saved: {os.path.relpath(p)}")
        if not res["results"]:
            click.echo(f"{ARROW} job {res['job_id']} produced no result files")
    except HomieError as e:
        _fail(e)


# -- the owner's controls --------------------------------------------------------------


@main.command()
@click.option("--suspend", is_flag=True, help="Also suspend (SIGSTOP) jobs running here.")
def pause(suspend):
    """Stop accepting new jobs from friends."""
    res = _request("pause", suspend=suspend)
    click.echo("paused: no new jobs" + ("; running jobs suspended (homie resume continues them)"
                                         if res.get("suspended") else ""))


@main.command()
def resume():
    """Accept jobs again (and continue suspended ones)."""
    res = _request("resume")
    click.echo(f"resumed: {res['status']}")


@main.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plugins_cmd(as_json):
    """List loaded plugins with their hooks and versions."""
    try:
        found = _client().request("plugins")["plugins"]
    except HomieError as e:
        if e.exit_code != EXIT_NO_DAEMON:
            _fail(e)
        from homie import plugins as _plugins

        _plugins.load_plugins()
        found = _plugins.describe()
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    rows = [[p["name"], p.get("version") or "", p.get("package") or "",
             ", ".join(p["hooks"]) if not p.get("disabled") else f"DISABLED: {p['disabled']}"] for p in found]
    click.echo(_table(["PLUGIN", "VERSION", "PACKAGE", "HOOKS"], rows))


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def karma(as_json):
    """Compute given to and taken from each friend."""
    res = _request("karma")
    if as_json:
        click.echo(json.dumps(res, indent=2))
        return
    if not res["ledger"]:
        click.echo("no jobs exchanged with friends yet")
        return
    rows = [[r["peer"], f'{r["given_cpu_s"]:.1f}', f'{r["taken_cpu_s"]:.1f}', f'{r["balance_cpu_s"]:+.1f}',
             f'{r["given_gpu_s"]:.1f}' if r["given_gpu_s"] or r["taken_gpu_s"] else "",
             f'{r["taken_gpu_s"]:.1f}' if r["given_gpu_s"] or r["taken_gpu_s"] else "",
             str(r["jobs_given"]), str(r["jobs_taken"])] for r in res["ledger"]]
    click.echo(_table(["PEER", "GAVE CPU-S", "TOOK CPU-S", "BALANCE", "GAVE GPU-S", "TOOK GPU-S", "JOBS RUN",
                       "JOBS SENT"], rows))


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def doctor(as_json):
    """Check key, config, network and peers; print each finding with a fix."""
    from homie.doctor import offline_findings

    findings = offline_findings(_home())
    try:
        findings += _client(timeout=20).request("doctor")["findings"]
    except HomieError as e:
        findings.append({"ok": False, "check": "daemon", "finding": str(e), "fix": "start it with: homie up"})
    if as_json:
        click.echo(json.dumps(findings, indent=2))
    else:
        for f in findings:
            mark = "ok  " if f["ok"] else ("warn" if f.get("warn") else "FAIL")
            click.echo(f"[{mark}] {f['check']}: {f['finding']}")
            if not f["ok"] and f.get("fix"):
                click.echo(f"       fix: {f['fix']}")
    sys.exit(0 if all(f["ok"] or f.get("warn") for f in findings) else 1)


@main.command("map", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": True})
@click.option("--over", "pattern", required=True, help="Glob of inputs, one job each (quote it: 'data/*.csv').")
@click.option("-j", "--jobs", "max_jobs", type=int, default=0, help="At most N jobs in flight (default: all; the queue spreads them).")
@click.option("-f", "--file", "files", multiple=True, help="Also send FILE with every job.")
@click.option("-o", "--output", "out_dir", default="results", show_default=True, help="Results go to DIR/<input-name>/.")
@click.option("--gpu", is_flag=True, help="Run each job on a peer with a free GPU.")
@click.argument("script")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def map_cmd(pattern, max_jobs, files, out_dir, gpu, script, args):
    """Run SCRIPT once per input matching --over, across the peers.

    The input goes in place of {} in ARGS, or last if there is no {}. Exits
    with the number of failed inputs (at most 100).
    """
    import glob
    import threading

    from homie import protocol

    inputs = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
    if not inputs:
        _fail(HomieError(f"no inputs match {pattern!r}", EXIT_USAGE))
    if not os.path.isfile(script):
        _fail(HomieError(f"script not found: {script}", EXIT_USAGE))
    try:
        _check_out_dir(out_dir)
        retries = _client().request("status").get("retries", 2)
    except HomieError as e:
        _fail(e)
    names = _input_names(inputs)
    lock = threading.Lock()
    gate = threading.Semaphore(max_jobs if max_jobs > 0 else len(inputs))
    outcome: dict[str, tuple[str, int, str]] = {}

    def one(path: str) -> None:
        name = names[path]
        # Where the input lands in the job directory (same rule as the upload):
        # its path relative to the script's folder when inside it, else its name.
        sdir = os.path.dirname(os.path.abspath(script))
        ap = os.path.abspath(path)
        rel = os.path.relpath(ap, sdir) if ap.startswith(sdir + os.sep) else os.path.basename(ap)
        job_args = [rel if a == "{}" else a.replace("{}", rel) for a in args]
        if not any("{}" in a for a in args):
            job_args.append(rel)
        req = dict(script=os.path.abspath(script), args=job_args, cwd=os.getcwd(),
                   files=[os.path.abspath(path), *files], peer=None, gpu=gpu, tag=name, retries=retries)
        peer = "?"
        with gate:
            try:
                partial = {1: b"", 2: b""}
                for ev in _client(timeout=None).stream("run", **req):
                    if isinstance(ev, protocol.Output):
                        buf = partial[ev.stream] + ev.data
                        lines = buf.split(b"\n")
                        partial[ev.stream] = lines.pop()
                        out = sys.stdout if ev.stream == 1 else sys.stderr
                        with lock:
                            for ln in lines:
                                out.buffer.write(f"[{peer} {name}] ".encode() + ln + b"\n")
                            out.flush()
                    elif isinstance(ev, protocol.Message) and ev.t == "event" and ev.get("kind") == "sending":
                        peer = ev["peer"]
                    elif isinstance(ev, protocol.Message) and ev.t == "reply":
                        end = ev.body
                        ok = end["state"] == "done" and end.get("code") == 0
                        if end["state"] == "done" and end.get("results"):
                            _deliver(end["results"], end["results_dir"], os.path.join(out_dir, name))
                        why = "ok" if ok else (end.get("message") or end.get("reason") or f"exit {end.get('exit_code')}")
                        outcome[path] = (end.get("peer") or peer, end.get("exit_code") or 0, why)
            except HomieError as e:
                outcome[path] = (peer, e.exit_code, str(e))
            except OSError as e:
                outcome[path] = (peer, 72, f"cannot save results: {e}")

    threads = [threading.Thread(target=one, args=(p,), daemon=True) for p in inputs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    failed = [p for p in inputs if outcome.get(p, ("?", 1, "no answer"))[2] != "ok"]
    by_peer: dict[str, int] = {}
    for p in inputs:
        peer = outcome.get(p, ("?",))[0]
        by_peer[peer] = by_peer.get(peer, 0) + 1
    spread = ", ".join(f"{k}: {v}" for k, v in sorted(by_peer.items()))
    click.echo(f"{ARROW} {len(inputs)} inputs: {len(inputs) - len(failed)} ok, {len(failed)} failed ({spread})")
    for p in failed:
        click.echo(f"   failed: {p}: {outcome.get(p, ('?', 1, 'no answer'))[2]}", err=True)
    sys.exit(min(len(failed), 100))


def _input_names(inputs: list[str]) -> dict[str, str]:
    """results/<input-name>/: the file name, or the relative path when names repeat."""
    base = {p: os.path.basename(p) for p in inputs}
    counts: dict[str, int] = {}
    for b in base.values():
        counts[b] = counts.get(b, 0) + 1
    return {p: (b if counts[b] == 1 else os.path.normpath(p).replace(os.sep, "_")) for p, b in base.items()}


@main.command()
@click.option("--once", is_flag=True, help="Print one frame and exit (no terminal needed).")
@click.option("--interval", type=float, default=0.5, show_default=True, help="Refresh period in seconds.")
def top(once, interval):
    """A live view of peers and jobs; q quits."""
    from homie.top import run_top

    try:
        run_top(_client, once=once, interval=interval)
    except HomieError as e:
        _fail(e)


def _register_extras() -> None:
    from homie.cli_service import service

    main.add_command(service)


_register_extras()
