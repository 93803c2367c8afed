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
from homie.errors import (EXIT_INTERNAL, EXIT_MAP_FAILED, EXIT_NO_DAEMON, EXIT_USAGE, EXIT_WOULD_WAIT,
                          HomieError)
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


def _printable(text: str) -> str:
    """Text that may hold undecodable bytes (surrogate escapes), safe to print and to send."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _fail(e: HomieError) -> None:
    click.echo(f"error: {_printable(str(e))}", err=True)
    sys.exit(e.exit_code)


def _say(text: str) -> None:
    """homie's own lines go to stderr, always: stdout carries the job's output alone."""
    click.echo(f"{ARROW} {text}", err=True)


def _client(timeout: float | None = 10.0):
    from homie.control import ControlClient

    return ControlClient(_home(), timeout=timeout)


def _request(t: str, **fields) -> dict:
    return _client().request(t, **fields)


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


class _Group(click.Group):
    """The one error path: any HomieError, from any verb, becomes its one-line
    message and its exit code; never a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except HomieError as e:
            _fail(e)
        except click.UsageError as e:
            # One sentence and where to look, instead of click's three-line usage block.
            where = e.ctx.command_path if e.ctx else "homie"
            click.echo(f"error: {e.format_message()} (see: {where} --help)", err=True)
            sys.exit(EXIT_USAGE)
        except KeyboardInterrupt:
            # Verbs that run jobs handle Ctrl-C themselves; anywhere else nothing is left behind.
            click.echo(f"\n{ARROW} interrupted (jobs already queued go on: homie ps)", err=True)
            sys.exit(130)
        except BrokenPipeError:
            # `homie ps | head`: the reader is gone, which is no error of ours.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(0)
        except (click.exceptions.Exit, click.Abort, click.ClickException):
            raise
        except Exception as e:
            if os.environ.get("HOMIE_DEBUG"):
                raise
            click.echo(f"error: internal error: {type(e).__name__}: {_printable(str(e))}"
                       " (HOMIE_DEBUG=1 shows the traceback; please report it)", err=True)
            sys.exit(EXIT_INTERNAL)


def _example(*lines: str) -> str:
    """An Examples section for a command's --help (\b keeps click from rewrapping it)."""
    return "\b\nExamples:\n" + "\n".join(f"  {ln}" for ln in lines)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]},
             epilog=_example("homie init --name raj", "homie up", "homie run train.py --epochs 10"))
@click.version_option(__version__, prog_name="homie")
def main():
    """Lend idle machines to friends on the same network."""


# -- the group key ---------------------------------------------------------------


def _show_key(key: bytes, intro: str) -> None:
    """Wherever a key is shown, the group fingerprint goes with it: friends compare it aloud."""
    from homie import keys

    click.echo(intro)
    click.echo(f"group key: {keys.format_key(key)}")
    click.echo(f"group fingerprint: {keys.fingerprint(key)} (friends who joined see the same one)")


@main.command(epilog=_example("homie init --name raj"))
@click.option("--name", metavar="NAME", help="This machine's name as friends see it.")
@click.option("--force", is_flag=True, help="Replace an existing group key with a NEW group (friends must join again).")
def init(name, force):
    """Create a new group: a home and a fresh random key."""
    from homie import keys
    from homie.config import save_config_value

    home = _home()
    home.ensure()
    if not force and home.key.exists():
        current = keys.load_key(home.key)
        raise HomieError(f"this machine is already in group {keys.fingerprint(current)} (key in {home.key});"
                         " `homie key` prints it; `homie init --force` would make a NEW group that friends"
                         " must join again", EXIT_USAGE)
    if name:
        save_config_value(home.config, "name", name)
    key = keys.generate_key()
    keys.save_key(home.key, key, force=force)
    _show_key(key, f"created a new group key in {home.key}")
    click.echo("friends join with:")
    click.echo(f"  homie join {keys.format_key(key)}")
    click.echo("anyone with this key can run code on your machine (in a sandbox where bubblewrap works):"
               " share it only with people you trust")


@main.command(epilog=_example("homie join ABCD-EFGH-...   (the line `homie init` printed)"))
@click.argument("key")
@click.option("--force", is_flag=True, help="Replace an existing group key.")
def join(key, force):
    """Join a friend's group with their KEY."""
    from homie import keys

    home = _home()
    raw = keys.parse_key(key)
    home.ensure()
    keys.save_key(home.key, raw, force=force)
    click.echo(f"joined group {keys.fingerprint(raw)}; key stored in {home.key}")
    click.echo(f"group fingerprint: {keys.fingerprint(raw)} (check it matches the one your friend sees)")
    if _daemon_running(home):
        click.echo("restart the daemon to use it: homie down && homie up")


@main.command(epilog=_example("homie key"))
def key():
    """Print the group key (to share with a friend) and its fingerprint."""
    from homie import keys

    k = keys.load_key(_home(owned=True).key)
    click.echo(keys.format_key(k))
    # stderr: `homie key | ...` still pipes the key alone
    click.echo(f"group fingerprint: {keys.fingerprint(k)}", err=True)


# -- the daemon --------------------------------------------------------------------


def _daemon_running(home: Home) -> int | None:
    from homie.daemon import daemon_pid

    return daemon_pid(home)


def _overrides(name, port, discovery_port, interface, bind) -> dict:
    return {"name": name, "port": port, "discovery_port": discovery_port, "interface": interface, "bind": bind}


def _check_runtime_config(home: Home, config, interface, bind, with_plugins: bool = True) -> None:
    """What only this machine can judge (users, plugins, addresses): one line, exit 2, before any start.
    Plugins are imported only by the daemon's own process (cwd /, isolated import path),
    never by the `homie up` that starts it from wherever the user stands."""
    from homie import checks
    from homie.errors import ConfigError

    if interface and (why := checks.check_interface(interface)):
        raise ConfigError(f"--interface: {why}")
    if bind and (why := checks.check_bind(bind)):
        raise ConfigError(f"--bind: {why}")
    if config.bind and not bind and (why := checks.check_bind(config.bind)):
        raise ConfigError(f"config error in {home.config}: bind: {why}")
    if config.interface and not interface and (why := checks.check_interface(config.interface)):
        raise ConfigError(f"config error in {home.config}: interface: {why}")
    for setting, why in checks.config_problems(config) if with_plugins else ():
        raise ConfigError(f"config error in {home.config}: {setting}: {why}")


@main.command(epilog=_example("homie up", "homie up --interface wlan0", "homie up --bind 192.168.1.20 --port 6000"))
@click.option("--name", metavar="NAME", help="Name to broadcast (default: config, then host name).")
@click.option("--port", type=str, metavar="PORT", help="TCP port for jobs (default 5556).")
@click.option("--discovery-port", type=str, metavar="PORT", help="UDP port for discovery (default 5555).")
@click.option("--interface", metavar="IFACE", help="Network interface to use (e.g. wlan0).")
@click.option("--bind", metavar="ADDRESS", help="IPv4 address to use (instead of --interface).")
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
    home.ensure()
    config = load_config(home.config, _overrides(name, port, discovery_port, interface, bind))
    pid = _daemon_running(home)
    if pid:
        try:
            st = _client().request("status")
            click.echo(f'homie is already running as "{st["name"]}" (pid {st["pid"]})')
        except HomieError:
            click.echo(f"homie is already running (pid {pid})")
        return
    try:
        _check_runtime_config(home, config, interface, bind, with_plugins=foreground)
    except HomieError as e:
        if ready_fd is not None:  # the `homie up` that started us says it, with our exit code
            os.write(ready_fd, f"error: {e}\nexit {e.exit_code}".encode()[:4000])
        raise
    try:
        key = keys.load_key(home.key)
    except HomieError as e:
        if os.path.lexists(home.key):  # a bad key (or a symlink) is reported, never replaced
            _fail(e)
        key = keys.generate_key()
        keys.save_key(home.key, key)
        _show_key(key, f"no group key yet: created one in {home.key}")
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
        _started(nm, prt)
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


def _started(name: str, port: str) -> None:
    """Say how friends find us: broadcast, static peers, or both, and the address they reach."""
    try:
        st = _client().request("status")
    except HomieError:
        click.echo(f'daemon started as "{name}"; listening for jobs on port {port}')
        return
    how = []
    if "udp" in st["discovery"]:
        how.append("broadcasting" + (f" to {', '.join(st['broadcast'])}" if st.get("broadcast") else ""))
    if "static" in st["discovery"]:
        how.append("heartbeats to static_peers")
    click.echo(f'daemon started as "{name}" ({"; ".join(how) or "no discovery"})')
    click.echo(f"listening for jobs on {st['address']}:{st['port']}")
    click.echo(f"group fingerprint: {st['key_fingerprint']}")


@main.command(epilog=_example("homie down"))
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
        raise HomieError(f"the daemon (pid {pid}) did not stop within 20 s")
    click.echo("homie stopped")


@main.command(epilog=_example("homie status", "homie status --json"))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (schema in docs/cli.md).")
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


def shown_status(p: dict) -> str:
    """What a peer's state means to a person: one running jobs with no CPU to spare is busy,
    whatever its heartbeat's accept-jobs status says."""
    status = p.get("status") or "?"
    if status == "idle" and (p.get("running") or 0) > 0:
        idle = p.get("cpu_percent_idle")
        if p.get("slots_free") == 0 or (idle is not None and idle < 10):
            status = "busy"
    return status


@main.command(epilog=_example("homie peers", "homie peers --json"))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (schema in docs/cli.md).")
def peers(as_json):
    """List peers and their resources."""
    res = _request("peers")
    plist = res["peers"]
    if as_json:
        out = []
        for p in plist:
            d = {k: p.get(k) for k in ("name", "ip", "port", "ram_free_gb", "ram_total_gb", "cpu_percent_idle", "gpu",
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
                   f" {_home().config}, and see `homie doctor`")
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
    click.echo(_table(["NAME", "IP", "CPU IDLE", "RAM FREE", "GPU", "JOBS", "STATUS"], rows))


# -- jobs ----------------------------------------------------------------------------


class _Printer:
    """Job output: each line prefixed with the peer's name, or raw (--quiet); stdout and stderr stay apart."""

    def __init__(self, tag: str | None):
        self.tag = tag
        self.partial = {1: b"", 2: b""}

    def feed(self, stream: int, data: bytes) -> None:
        out = sys.stdout if stream == 1 else sys.stderr
        if self.tag is None:
            out.buffer.write(data)
            out.flush()
            return
        buf = self.partial[stream] + data
        lines = buf.split(b"\n")
        self.partial[stream] = lines.pop()
        if lines:
            prefix = f"[{self.tag}] ".encode()
            out.buffer.write(b"".join(prefix + ln + b"\n" for ln in lines))
            out.flush()

    def flush(self) -> None:
        for stream in (1, 2):
            if self.partial[stream]:
                self.feed(stream, b"\n")


def _deliver(results: list[str], src_dir: str, out_dir: str, job_id: str | None = None) -> list[str]:
    """Put fetched results into out_dir, each appearing whole under its final name.

    A result that would replace a different file already there (the last run's)
    sends this job's results to out_dir/<job id>/ instead: nothing is overwritten."""
    import filecmp
    import shutil

    if job_id and any(os.path.exists(os.path.join(out_dir, rel))
                      and not filecmp.cmp(os.path.join(src_dir, rel), os.path.join(out_dir, rel), shallow=False)
                      for rel in results):
        out_dir = os.path.join(out_dir, job_id)
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
    """A rich progress bar for big transfers, only on a terminal; gone once the job starts."""

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
            from rich.console import Console
            from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

            # Decimal units, like the "sending" line (_size): the two never disagree.
            self.bar = Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                                TransferSpeedColumn(), transient=True, console=Console(stderr=True))
            self.bar.start()
            self.task = self.bar.add_task(ev["phase"], total=ev["total"])
            self.phase = ev["phase"]
        self.bar.update(self.task, completed=ev["done"])

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
            self.phase = None


def _follow_stream(events, out_dir: str | None, quiet: bool = False, tag: str | None = None,
                   attached: str | None = None) -> int:
    """Print a job's events and output; return the exit code for the shell.

    attached: the job id when following an existing job (attach): its past
    events are told as what happened, not as if they happened again, and
    Ctrl-C detaches instead of interrupting the job."""
    from homie import protocol

    printer = None
    progress = _Progress()
    state = {"interrupts": 0, "job_id": attached, "detach": attached is not None}
    _install_interrupt(state)
    say = (lambda text: None) if quiet else _say
    for ev in events:
        if isinstance(ev, protocol.Output):
            if printer is None:
                printer = _Printer(None if quiet else (tag or "?"))
            printer.feed(ev.stream, ev.data)
            continue
        if not isinstance(ev, protocol.Message):
            continue
        if ev.t == "reply":
            progress.close()
            if printer:
                printer.flush()
            return _finish_run(ev.body, out_dir, quiet)
        kind = ev.get("kind")
        if kind == "job":
            state["job_id"] = ev["job_id"]
        elif kind == "queued":
            say(f"queued: {ev['why']}")
        elif kind == "sending":
            size = ev.get("bytes") or 0
            extra = f" ({ev['files']} files, {_size(size)})" if size >= 10 << 20 or (ev.get("files") or 0) > 20 else ""
            if attached:
                say(f"job {attached} was sent to {ev['peer']} ({ev['via']}){extra}")
            else:
                say(f"sending to {ev['peer']} ({ev['via']}){extra}")
            printer = _Printer(None if quiet else (tag or ev["peer"]))
        elif kind == "resumed":
            at = ev.get("checkpoint_at")
            where = (f"from the checkpoint of {time.strftime('%H:%M:%S', time.localtime(at))}" if at
                     else "from the beginning")
            say(f"resumed on {ev['peer']} {where} (attempt {ev['attempt']})")
        elif kind == "started":
            progress.close()  # the upload is over: no bar frozen at its last value while the job runs
            if printer is None or (not quiet and printer.tag != (tag or ev["peer"])):
                printer = _Printer(None if quiet else (tag or ev["peer"]))
            if not attached:
                say(f"job started: {ev['job_id']}")
        elif kind == "progress":
            progress.update(ev)
    return EXIT_NO_DAEMON


def _size(n: float) -> str:
    """Decimal units (1 MB = 10^6 bytes), as the progress bar shows them."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def _finish_run(end: dict, out_dir: str | None, quiet: bool) -> int:
    state = end["state"]
    code = end.get("exit_code")
    if state == "done":
        sig = end.get("signal")
        if end.get("reason"):
            _say(f"job {end['reason']}")
        elif sig:
            _say(f"job killed by signal {sig}")
        elif end.get("code"):
            _say(f"job failed with exit code {end['code']}")
        elif not quiet:
            _say("job complete")
        if end.get("results") and out_dir is not None:
            try:
                saved = _deliver(end["results"], end["results_dir"], out_dir, end.get("job_id"))
            except OSError as e:
                click.echo(f"error: cannot save results into {out_dir}: {e.strerror or e}", err=True)
                return 72
            if not quiet:
                for p in saved:
                    _say(f"saved: {os.path.relpath(p)}")
        return code if code is not None else 73
    if not end.get("terminal", True):
        return 0
    _say(f"job {state}: {end.get('message') or end.get('reason') or ''}".rstrip(": "))
    return code if code is not None else 1


def _install_interrupt(state: dict) -> None:
    """Ctrl-C: the first interrupts the remote job, a second kills it; when
    attached to an existing job, Ctrl-C only detaches (the job goes on)."""
    import signal as _signal
    import threading

    def send(sig):
        try:
            _client().request("kill", job_id=state["job_id"], sig=int(sig))
        except HomieError as e:
            _say(str(e))

    def handler(signum, frame):
        state["interrupts"] += 1
        job = state["job_id"]
        if not job:
            click.echo(f"\n{ARROW} interrupted before the job was queued: nothing runs", err=True)
            os._exit(130)
        n = state["interrupts"]
        if state.get("detach") or n > 2:
            click.echo(f"\n{ARROW} detached; job {job} goes on (homie attach {job} follows it,"
                       f" homie kill {job} stops it)", err=True)
            os._exit(130)
        if n == 1:
            click.echo(f"\n{ARROW} interrupting job {job} (Ctrl-C again to kill it)", err=True)
            threading.Thread(target=send, args=(_signal.SIGINT,), daemon=True).start()
        else:
            click.echo(f"\n{ARROW} killing job {job}", err=True)
            threading.Thread(target=send, args=(_signal.SIGKILL,), daemon=True).start()

    _signal.signal(_signal.SIGINT, handler)


# Arguments and names travel in one message to the daemon and on to the peer:
# far below the 1 MiB frame cap, so a long argument list is a clear error here.
MAX_ARGS_BYTES = 960 * 1024
STDIN_NAME = ".homie-stdin"


def _utf8(what: str, text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise HomieError(f"{what} is not valid UTF-8: {_printable(text)!r} (homie sends text only;"
                         " rename the file or pass the value in a file with -f)", EXIT_USAGE) from None
    return text


def _check_args(args: list[str]) -> None:
    for i, a in enumerate(args, 1):
        _utf8(f"argument {i}", a)
    size = sum(len(a.encode()) + 3 for a in args)  # as JSON: quotes and a comma each
    if size > MAX_ARGS_BYTES:
        raise HomieError(f"the arguments are too long ({_size(size)} in all, at most {_size(MAX_ARGS_BYTES)}):"
                         " put long inputs in a file and send it with -f", EXIT_USAGE)


def parse_duration(text: str) -> float:
    """'90', '90s', '1.5m', '2h', '1d' -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    t = text.strip().lower()
    mult = units.get(t[-1:], None)
    num = t[:-1] if mult else t
    try:
        value = float(num) * (mult or 1)
    except ValueError:
        value = -1
    if not value > 0 or value != value or value == float("inf"):
        raise click.BadParameter(f"{text!r} is not a duration (examples: 30s, 10m, 2h, 1d)")
    return value


def _parse_env(pairs: tuple[str, ...], env_file: str | None) -> dict[str, str]:
    import re

    items: list[tuple[str, str]] = []
    if env_file:
        try:
            with open(env_file, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise HomieError(f"cannot read --env-file {env_file}: {getattr(e, 'strerror', None) or e}",
                             EXIT_USAGE) from None
        for n, line in enumerate(lines, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if "=" not in line:
                raise HomieError(f"{env_file}:{n}: expected KEY=VALUE, got {line[:40]!r}", EXIT_USAGE)
            items.append(tuple(line.removeprefix("export ").split("=", 1)))  # type: ignore[arg-type]
    for p in pairs:
        if "=" not in p:
            # like docker: -e NAME passes this shell's value on
            if p not in os.environ:
                raise HomieError(f"-e {p}: expected KEY=VALUE (and {p} is not set here)", EXIT_USAGE)
            items.append((p, os.environ[p]))
        else:
            items.append(tuple(p.split("=", 1)))  # type: ignore[arg-type]
    env = {}
    for k, v in items:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k):
            raise HomieError(f"-e {_printable(k)}=...: not a valid variable name", EXIT_USAGE)
        _utf8(f"the value of {k}", v)
        if "\0" in v:
            raise HomieError(f"the value of {k} contains a NUL byte", EXIT_USAGE)
        env[k] = v
    return env


def _read_stdin(home: Home) -> str | None:
    """What is piped or redirected into `homie run`, saved for the daemon to send
    as the job's stdin; None on a terminal or /dev/null (nothing to forward)."""
    import stat
    import tempfile

    try:
        mode = os.fstat(0).st_mode
    except OSError:
        return None
    if sys.stdin.isatty() or not (stat.S_ISFIFO(mode) or stat.S_ISREG(mode) or stat.S_ISSOCK(mode)):
        return None
    import select

    if not stat.S_ISREG(mode) and not select.select([0], [], [], 3.0)[0]:
        # A pipe nobody writes to (a caller's inherited stdin) would hang here silently.
        _say("reading stdin for the job until it closes (--no-stdin sends none)")
    d = home.root / "stdin"
    d.mkdir(mode=0o700, exist_ok=True)
    fd, path = tempfile.mkstemp(prefix="stdin-", dir=d)
    with os.fdopen(fd, "wb") as f:
        while chunk := os.read(0, 1 << 20):
            f.write(chunk)
    if os.path.getsize(path) == 0:
        os.unlink(path)
        return None
    return path


def _check_inputs(script: str, files: tuple[str, ...], directory: str | None) -> None:
    import glob

    _utf8("the script's path", script)
    if not os.path.isfile(script):
        hint = f" (options go before SCRIPT; `homie run --help` lists them)" if script.startswith("-") else ""
        raise HomieError(f"script not found: {script}{hint}", EXIT_USAGE)
    if not script.endswith(".py"):
        try:
            with open(script, "rb") as f:
                first = f.read(2)
        except OSError as e:
            raise HomieError(f"cannot read {script}: {e.strerror}", EXIT_USAGE) from None
        if first != b"#!":
            raise HomieError(f"{script} is not a .py file and has no #! line, so no machine can tell how to run"
                             " it: add one (e.g. #!/bin/sh) as its first line", EXIT_USAGE)
    for f in files:
        _utf8("-f", f)
        if os.path.isdir(f):
            raise HomieError(f"-f {f} is a directory: send a whole folder with -d {f}", EXIT_USAGE)
        if not glob.has_magic(f) and not os.path.exists(f):
            raise HomieError(f"-f {f}: no such file", EXIT_USAGE)
    if directory is not None:
        _utf8("-d", directory)
        if not os.path.isdir(directory):
            raise HomieError(f"-d {directory}: not a directory", EXIT_USAGE)


RUN_HELP = """Run SCRIPT [ARGS]... on the best idle peer; output streams back live.

Everything after SCRIPT is passed to the script untouched; homie's options go
before SCRIPT.

\b
What is sent: SCRIPT only, unless you add files. A script that reads
data.csv needs `-f data.csv` (repeatable, globs allowed) or the whole folder
with `-d .` (honours .gitignore and .homieignore). Sent files are read-only in
the job; files the job creates come back into -o DIR (default ./results).

\b
Job output goes to stdout/stderr prefixed with [peer]; homie's own lines go to
stderr. With --quiet the job's output is passed through untouched and homie
says nothing but errors. Piped or redirected stdin is forwarded to the job.
"""


@main.command(help=RUN_HELP, context_settings={"allow_interspersed_args": False},
              epilog=_example("homie run hello.py", "homie run -f data.csv train.py --epochs 10",
                              "homie run -d . train.py --epochs 10", "homie run -n raj --gpu train.py",
                              "homie run -e SEED=1 --timeout 2h --name exp1 train.py",
                              "homie run --quiet count.py < words.txt > counts.txt",
                              "homie run --checkpoint ckpt/ --retries 5 train.py --epochs 100"))
@click.option("-n", "--peer", metavar="PEER", help="Run on this peer (by name; your own name runs it here).")
@click.option("-f", "--file", "files", multiple=True, metavar="FILE", help="Also send FILE (repeatable; globs allowed).")
@click.option("-d", "--dir", "directory", metavar="DIR", help="Send this whole project directory (honours .gitignore/.homieignore).")
@click.option("-o", "--output", "out_dir", default="results", show_default=True, metavar="DIR", help="Where result files go.")
@click.option("--gpu", is_flag=True, help="Run on a peer with a free GPU.")
@click.option("-e", "--env", "env_pairs", multiple=True, metavar="KEY=VAL", help="Set an environment variable in the job (repeatable).")
@click.option("--env-file", metavar="FILE", help="Read KEY=VAL lines (# comments) into the job's environment.")
@click.option("--timeout", type=parse_duration, metavar="DURATION", help="Stop the job after DURATION (30s, 10m, 2h).")
@click.option("--name", "label", metavar="LABEL", help="A label for the job, shown by homie ps.")
@click.option("-q", "--quiet", is_flag=True, help="Only the job's output, unprefixed; homie's own lines only on errors.")
@click.option("--no-stdin", is_flag=True, help="Send the job no stdin even if one is piped (like ssh -n; for loops reading a list).")
@click.option("--executor", metavar="NAME", help="Executor on the worker (subprocess, venv, ...; default auto).")
@click.option("--scheduler", metavar="NAME", help="Scheduler choosing the peer (default from config).")
@click.option("--checkpoint", "checkpoints", multiple=True, metavar="PATH",
              help="A file or directory of the job (besides $HOMIE_CHECKPOINT_DIR) holding its checkpoint: sent home"
                   " as it changes, restored if the job has to move (repeatable).")
@click.option("--retries", type=click.IntRange(min=0), metavar="N",
              help="Run the job again (from its checkpoint, if any) up to N times if its peer is lost"
                   " (default: 3 with a checkpoint, else 0).")
@click.option("--detach", is_flag=True, help="Return at once with the job id; follow it with homie attach.")
@click.option("--explain", is_flag=True, help="Only say which peers could take the job, and why not (exit 0: would run now, 75: would wait, 70: cannot run).")
@click.option("--json", "as_json", is_flag=True, help="With --detach or --explain: machine-readable output.")
@click.argument("script")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def run(peer, files, directory, out_dir, gpu, env_pairs, env_file, timeout, label, quiet, no_stdin, executor,
        scheduler, checkpoints, retries, detach, explain, as_json, script, args):
    if as_json and not (detach or explain):
        raise HomieError("--json goes with --detach or --explain (a running job's output is not JSON)", EXIT_USAGE)
    _check_inputs(script, files, directory)
    _check_args(list(args))
    env = _parse_env(env_pairs, env_file)
    if label is not None:
        _utf8("--name", label)
    if not explain and not detach:
        _check_out_dir(out_dir)
    req = dict(script=os.path.abspath(script), args=list(args), cwd=_utf8("this directory", os.getcwd()),
               files=list(files), directory=directory, peer=peer, gpu=gpu, executor=executor, scheduler=scheduler,
               detach=detach, explain=explain, env=env, timeout=timeout, name=label)
    if checkpoints:
        req["checkpoints"] = [_utf8("--checkpoint", c) for c in checkpoints]
    if retries is not None:
        req["retries"] = retries
    if explain:
        _explain(req, as_json)
        return
    client = _client(timeout=None)
    req["stdin_file"] = None if no_stdin else _read_stdin(_home())
    try:
        if detach:
            job_id = None
            for ev in client.stream("run", **req):
                if getattr(ev, "t", None) == "reply":
                    job_id = ev["job_id"]
            click.echo(json.dumps({"job_id": job_id}) if as_json else job_id)
            return
        code = _follow_stream(client.stream("run", **req), out_dir, quiet=quiet)
    finally:
        if req["stdin_file"] and os.path.exists(req["stdin_file"]):
            os.unlink(req["stdin_file"])  # the daemon did not take it: the job was refused
    sys.exit(code)


def _explain(req: dict, as_json: bool) -> None:
    res = _client(timeout=None).request("run", **req)
    code = 0 if res["chosen"] else (EXIT_WOULD_WAIT if res.get("verdict") == "wait" else 70)
    if as_json:
        click.echo(json.dumps(res, indent=2))
        sys.exit(code)
    for p in res["peers"]:
        mark = "eligible" if p["eligible"] else "not eligible: " + "; ".join(p["reasons"])
        who = p["name"] + (" (this machine)" if p["local"] else "")
        click.echo(f"{who:24} {p['ip']:16} {mark}")
    if res["chosen"]:
        click.echo(f"{ARROW} would run on {res['chosen']}")
    elif res.get("verdict") == "wait":
        click.echo(f"{ARROW} the job would wait: {res.get('why') or 'no peer is free now'}")
    else:
        click.echo(f"{ARROW} the job cannot run: {res.get('why') or 'no peer can take it'}")
    sys.exit(code)


def _ps(show_all: bool) -> dict:
    """Jobs from the daemon, which sends them in batches: no list is ever too big for one message."""
    from homie import protocol

    sent, here, now = [], [], time.time()
    for ev in _client(timeout=None).stream("ps", all=show_all):
        if isinstance(ev, protocol.Message) and ev.t == "event" and ev.get("kind") == "ps":
            sent += ev.get("jobs") or []
            here += ev.get("here") or []
        elif isinstance(ev, protocol.Message) and ev.t == "reply":
            now = ev.get("now", now)
    return {"jobs": sent, "here": here, "now": now}


JOB_STATES = ("queued", "uploading", "running", "fetching", "done", "failed", "lost", "killed",
              "preparing", "exited", "finished")


def _status_list(ctx, param, value):
    if not value:
        return None
    wanted = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in wanted if v not in JOB_STATES]
    if bad:
        raise click.BadParameter(f"unknown status {bad[0]!r} (one of: {', '.join(JOB_STATES)})")
    return set(wanted)


@main.command(epilog=_example("homie ps", "homie ps --all --status failed,lost", "homie ps --peer raj -q",
                              "homie ps --json"))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (schema in docs/cli.md).")
@click.option("-a", "--all", "show_all", is_flag=True, help="Include finished jobs.")
@click.option("--status", "statuses", callback=_status_list, metavar="STATUS[,STATUS]",
              help="Only jobs in these states (queued, running, done, failed, lost, killed...); implies --all.")
@click.option("--peer", metavar="PEER", help="Only jobs on (or from) this peer.")
@click.option("-q", "--quiet", "ids_only", is_flag=True, help="Only job ids, one a line (for scripts).")
def ps(as_json, show_all, statuses, peer, ids_only):
    """Jobs sent from here, and jobs that ran here for friends."""
    res = _ps(show_all or bool(statuses))
    sent = [j for j in res["jobs"] if (not statuses or j["status"] in statuses)
            and (not peer or j.get("peer") == peer)]
    here = [j for j in res["here"] if (not statuses or j["status"] in statuses)
            and (not peer or j.get("from") == peer)]
    if as_json:
        click.echo(json.dumps({"sent": sent, "here": here}, indent=2))
        return
    if ids_only:
        for j in sent + here:
            click.echo(j["job_id"])
        return
    now = res["now"]
    if not sent and not here:
        filtered = " matching" if statuses or peer else ""
        click.echo(f"no jobs{filtered}" + ("" if show_all or statuses else " running (homie ps --all shows finished ones)"))
        return
    if sent:
        rows = []
        for j in sent:
            status = j["status"]
            if status == "queued" and j.get("why"):
                status = f"queued ({j['why']})"
            elif j["status"] in ("done",) and j.get("exit_code") not in (None, 0):
                status = f"exit {j['exit_code']}"
            if (j.get("attempt") or 1) > 1:
                status += f" (attempt {j['attempt']})"
            script = " ".join([os.path.basename(j["script"] or "?"), *j["args"]])[:40]
            rows.append([j["job_id"], j.get("name") or "", j.get("peer") or "", script, status,
                         _age(now - j["created"])])
        click.echo("sent from here:")
        click.echo(_table(["ID", "NAME", "PEER", "SCRIPT", "STATUS", "AGE"], rows))
    if here:
        if sent:
            click.echo()
        rows = [[j["job_id"], j["from"], " ".join([j["script"] or "?", *j["args"]])[:40],
                 j["status"] if j.get("code") in (None, 0) else f"{j['status']} (exit {j['code']})",
                 _age(now - j["created"])] for j in here]
        click.echo("run here for friends:")
        click.echo(_table(["ID", "FROM", "SCRIPT", "STATUS", "AGE"], rows))


def _signal_arg(sig: str) -> int:
    from homie.control import signal_number

    try:
        return signal_number(sig)
    except (AttributeError, ValueError):
        raise HomieError(f"unknown signal {sig!r} (INT, TERM, KILL or a number)", EXIT_USAGE) from None


@main.command(epilog=_example("homie kill 3f9a61c2", "homie kill 3f9a 77aa -s INT", "homie kill --all"))
@click.argument("job_ids", nargs=-1, metavar="JOB...")
@click.option("--all", "kill_all", is_flag=True, help="Every unfinished job sent from here.")
@click.option("-s", "--signal", "sig", default="KILL", show_default=True, metavar="SIG",
              help="Signal to send (INT, TERM, KILL). KILL stops the job: SIGTERM, then SIGKILL after 2 s.")
def kill(job_ids, kill_all, sig):
    """Kill jobs (each one's whole process tree), wherever they run."""
    num = _signal_arg(sig)
    if kill_all:
        job_ids = tuple(j["job_id"] for j in _ps(False)["jobs"])
        if not job_ids:
            click.echo("no unfinished jobs sent from here")
            return
    elif not job_ids:
        raise HomieError("name the JOB(s) to kill, or --all (see `homie ps`)", EXIT_USAGE)
    failed = None
    for job_id in job_ids:
        try:
            click.echo(_request("kill", job_id=job_id, sig=num)["message"])
        except HomieError as e:
            click.echo(f"error: {_printable(str(e))}", err=True)
            failed = e.exit_code
    if failed is not None:
        sys.exit(failed)


@main.command("wait", epilog=_example("homie wait 3f9a61c2", "homie wait $(homie ps -q)"))
@click.argument("job_ids", nargs=-1, required=True, metavar="JOB...")
def wait_cmd(job_ids):
    """Wait until the JOBs end; exit 0 if all succeeded, else the last failure's code."""
    from homie import protocol

    code = 0
    for job_id in job_ids:
        end = None
        for ev in _client(timeout=None).stream("follow", job_id=job_id, live=True, quiet=True):
            if isinstance(ev, protocol.Message) and ev.t == "reply":
                end = ev.body
        if end is None:
            continue
        c = end.get("exit_code")
        ok = end["state"] == "done" and c == 0
        _say(f"job {end['job_id']} {'done' if ok else end['state']}"
             + ("" if ok else f" (exit {c}{': ' + end['message'] if end.get('message') else ''})"))
        if not ok:
            code = c if c else 1
    sys.exit(code)


@main.command(epilog=_example("homie restart 3f9a61c2", "homie restart 3f9a61c2 --detach"))
@click.argument("job_id", metavar="JOB")
@click.option("-o", "--output", "out_dir", default="results", show_default=True, metavar="DIR", help="Where result files go.")
@click.option("--detach", is_flag=True, help="Return at once with the new job id.")
@click.option("-q", "--quiet", is_flag=True, help="Only the job's output, unprefixed.")
def restart(job_id, out_dir, detach, quiet):
    """Run a job again: same script, arguments, files, options (a new job id)."""
    from homie import protocol

    if not detach:
        _check_out_dir(out_dir)
    events = _client(timeout=None).stream("restart", job_id=job_id, detach=detach)
    if detach:
        for ev in events:
            if isinstance(ev, protocol.Message) and ev.t == "reply":
                click.echo(ev["job_id"])
        return
    sys.exit(_follow_stream(events, out_dir, quiet=quiet))


@main.command(epilog=_example("homie clean", "homie clean 3f9a61c2"))
@click.argument("job_ids", nargs=-1, metavar="[JOB...]")
def clean(job_ids):
    """Forget finished jobs (all, or the JOBs named) and delete their kept results and logs."""
    if not job_ids:
        job_ids = tuple(j["job_id"] for j in _ps(True)["jobs"] if j["status"] in ("done", "failed", "lost", "killed"))
    n = 0
    for job_id in job_ids:
        _request("forget", job_id=job_id)
        n += 1
    click.echo(f"forgot {n} finished job(s)" if n else "no finished jobs to forget")


@main.command(epilog=_example("homie attach 3f9a61c2"))
@click.argument("job_id", metavar="JOB")
@click.option("-o", "--output", "out_dir", default="results", show_default=True, metavar="DIR", help="Where result files go.")
@click.option("-q", "--quiet", is_flag=True, help="Only the job's output, unprefixed.")
def attach(job_id, out_dir, quiet):
    """Follow a job live, with its earlier output first; Ctrl-C detaches (the job goes on)."""
    from homie import protocol

    full = job_id
    events = _client(timeout=None).stream("follow", job_id=job_id, live=True)
    first = next(events, None)
    if isinstance(first, protocol.Message) and first.t == "event" and first.get("kind") == "job":
        full = first["job_id"]

    def chain():
        if first is not None:
            yield first
        yield from events

    sys.exit(_follow_stream(chain(), out_dir, quiet=quiet, attached=full))


@main.command(epilog=_example("homie logs 3f9a61c2", "homie logs 3f9a61c2 --tail 20", "homie logs -f 3f9a61c2"))
@click.argument("job_id", metavar="JOB")
@click.option("-f", "--follow", is_flag=True, help="Keep following until the job ends.")
@click.option("-n", "--tail", type=click.IntRange(min=0), metavar="N", help="Only the last N lines so far.")
def logs(job_id, follow, tail):
    """Print a job's output so far (jobs sent from here, or run here for a friend)."""
    from homie import protocol

    end = None
    chunks: list[tuple[int, bytes]] = []
    for ev in _client(timeout=None).stream("follow", job_id=job_id, live=follow and tail is None):
        if isinstance(ev, protocol.Output):
            if tail is None:
                out = sys.stdout if ev.stream == 1 else sys.stderr
                out.buffer.write(ev.data)
                out.flush()
            else:
                chunks.append((ev.stream, ev.data))
        elif getattr(ev, "t", None) == "reply":
            end = ev.body
    if tail is not None:
        _print_tail(chunks, tail)
        if follow and end and not end.get("terminal"):
            for ev in _client(timeout=None).stream("follow", job_id=job_id, live=True, offset=end["offset"]):
                if isinstance(ev, protocol.Output):
                    out = sys.stdout if ev.stream == 1 else sys.stderr
                    out.buffer.write(ev.data)
                    out.flush()
                elif getattr(ev, "t", None) == "reply":
                    end = ev.body
    if end and end.get("terminal") and end.get("state") not in ("done", None):
        _say(f"job {end['state']}: {end.get('message') or ''}".rstrip(": "))


def _print_tail(chunks: list[tuple[int, bytes]], n: int) -> None:
    """The last n lines, each to the stream it came from."""
    lines: list[tuple[int, bytes]] = []
    partial = {1: b"", 2: b""}
    for stream, data in chunks:
        parts = (partial[stream] + data).split(b"\n")
        partial[stream] = parts.pop()
        lines += [(stream, p + b"\n") for p in parts]
    lines += [(s, p) for s, p in partial.items() if p]
    for stream, line in lines[len(lines) - n:] if n else []:
        out = sys.stdout if stream == 1 else sys.stderr
        out.buffer.write(line)
        out.flush()


@main.command(epilog=_example("homie results 3f9a61c2", "homie results 3f9a61c2 -o later"))
@click.argument("job_id", metavar="JOB")
@click.option("-o", "--output", "out_dir", default="results", show_default=True, metavar="DIR", help="Where result files go.")
def results(job_id, out_dir):
    """Fetch a finished job's result files."""
    res = _client().request("get_results", job_id=job_id)
    _check_out_dir(out_dir)
    for p in _deliver(res["results"], res["results_dir"], out_dir, res["job_id"]):
        _say(f"saved: {os.path.relpath(p)}")
    if not res["results"]:
        _say(f"job {res['job_id']} produced no result files")


# -- the owner's controls --------------------------------------------------------------


@main.command(epilog=_example("homie pause", "homie pause --suspend", "homie pause --evict"))
@click.option("--suspend", is_flag=True, help="Also suspend (SIGSTOP) jobs running here.")
@click.option("--evict", is_flag=True,
              help="Also send running jobs away: SIGTERM, evict_grace_seconds to write a checkpoint, then they"
                   " go on elsewhere from it.")
def pause(suspend, evict):
    """Stop accepting new jobs from friends."""
    if suspend and evict:
        raise HomieError("--suspend keeps jobs here and --evict sends them away: choose one", EXIT_USAGE)
    res = _request("pause", suspend=suspend, evict=evict)
    if evict:
        n = res.get("evicted") or 0
        click.echo(f"paused: no new jobs; {n} running job{'s' if n != 1 else ''} evicted (SIGTERM, then"
                   f" {res.get('grace', 10):g} s to checkpoint; their owners' daemons run them on elsewhere)")
        return
    click.echo("paused: no new jobs" + ("; running jobs suspended (homie resume continues them)"
                                         if res.get("suspended") else ""))


@main.command(epilog=_example("homie resume"))
def resume():
    """Accept jobs again (and continue suspended ones)."""
    res = _request("resume")
    click.echo(f"resumed: {res['status']}")


@main.command("plugins", epilog=_example("homie plugins", "homie plugins --json"))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (schema in docs/cli.md).")
def plugins_cmd(as_json):
    """List loaded plugins with their hooks and versions."""
    try:
        found = _client().request("plugins")["plugins"]
    except HomieError as e:
        if e.exit_code != EXIT_NO_DAEMON:
            raise
        from homie import plugins as _plugins

        _plugins.load_plugins()
        found = _plugins.describe()
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    rows = [[p["name"], p.get("version") or "", p.get("package") or "",
             ", ".join(p["hooks"]) if not p.get("disabled") else f"DISABLED: {p['disabled']}"] for p in found]
    click.echo(_table(["PLUGIN", "VERSION", "PACKAGE", "HOOKS"], rows))


def _seconds(x: float) -> str:
    """Signed seconds with one decimal, never "-0.0"."""
    r = round(x, 1)
    return f"{r:+.1f}" if r else "0.0"


@main.command(epilog=_example("homie karma", "homie karma --json"))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (schema in docs/cli.md).")
def karma(as_json):
    """Compute given to and taken from each friend."""
    res = _request("karma")
    if as_json:
        click.echo(json.dumps(res, indent=2))
        return
    if not res["ledger"]:
        click.echo("no jobs exchanged with friends yet")
        return
    rows = [[r["peer"], f'{r["given_cpu_s"]:.1f}', f'{r["taken_cpu_s"]:.1f}', _seconds(r["balance_cpu_s"]),
             f'{r["given_gpu_s"]:.1f}' if r["given_gpu_s"] or r["taken_gpu_s"] else "",
             f'{r["taken_gpu_s"]:.1f}' if r["given_gpu_s"] or r["taken_gpu_s"] else "",
             str(r["jobs_given"]), str(r["jobs_taken"])] for r in res["ledger"]]
    click.echo(_table(["PEER", "GAVE CPU-S", "TOOK CPU-S", "BALANCE", "GAVE GPU-S", "TOOK GPU-S", "JOBS RUN",
                       "JOBS SENT"], rows))


@main.command(epilog=_example("homie doctor", "homie doctor --json"))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (schema in docs/cli.md).")
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


def _halt_rule(ctx, param, value):
    """GNU parallel's --halt: never, or (now|soon),fail=N."""
    if value in (None, "never"):
        return None
    import re

    m = re.fullmatch(r"(now|soon),fail=(\d+)", value or "")
    if not m or int(m.group(2)) < 1:
        raise click.BadParameter(f"{value!r}: use never, now,fail=N or soon,fail=N")
    return m.group(1), int(m.group(2))


class _MapRun:
    """The shared state of one `homie map`: job ids for Ctrl-C, outcomes, the halt rule."""

    def __init__(self, inputs: list[str], halt):
        import threading

        self.lock = threading.Lock()
        self.ids: dict[str, str] = {}
        self.outcome: dict[str, dict] = {}
        self.halt = halt
        self.stopping = False  # no new job starts (Ctrl-C or --halt)
        self.interrupts = 0
        self.failed = 0
        self.inputs = inputs

    def kill_all(self, sig: int) -> None:
        import threading

        def one(job_id):
            try:
                _client().request("kill", job_id=job_id, sig=sig)
            except HomieError:
                pass  # already over

        with self.lock:
            ids = [j for p, j in self.ids.items() if p not in self.outcome]
        for j in ids:
            threading.Thread(target=one, args=(j,), daemon=True).start()

    def record(self, path: str, out: dict) -> None:
        import signal as _signal

        with self.lock:
            self.outcome[path] = out
            if out["state"] != "ok":
                self.failed += 1
            halt = self.halt and out["state"] != "ok" and self.failed >= self.halt[1] and not self.stopping
            if halt:
                self.stopping = True
        if halt:
            _say(f"halting after {self.failed} failure(s): no new jobs start"
                 + ("; killing the running ones" if self.halt[0] == "now" else "; waiting for the running ones"))
            if self.halt[0] == "now":
                self.kill_all(int(_signal.SIGKILL))


MAP_HELP = """Run SCRIPT once per input matching --over, across the peers (like GNU parallel).

The input goes in place of {} in ARGS, or last if there is no {}; each job
gets SCRIPT, its input and the -f files; results go to DIR/<input-name>/.

\b
Ctrl-C cancels every job of this map (queued ones never start); Ctrl-C again
kills them. Exit status: 0 when every input succeeded, 4 when any failed,
130 after Ctrl-C; homie's own errors keep their codes (2, 69-73).
"""


@main.command("map", help=MAP_HELP, context_settings={"ignore_unknown_options": True, "allow_interspersed_args": True},
              epilog=_example("homie map count.py --over 'data/*.csv'",
                              "homie map resize.py --over 'img/*.png' --out-size 64 {} -j 4",
                              "homie map train.py --over 'cfg/*.yaml' --halt now,fail=1 --joblog jobs.tsv"))
@click.option("--over", "pattern", required=True, metavar="GLOB", help="Glob of inputs, one job each (quote it: 'data/*.csv').")
@click.option("-j", "--jobs", "max_jobs", type=click.IntRange(min=0), default=0, metavar="N", help="At most N jobs in flight (default: all; the queue spreads them).")
@click.option("-f", "--file", "files", multiple=True, metavar="FILE", help="Also send FILE with every job.")
@click.option("-o", "--output", "out_dir", default="results", show_default=True, metavar="DIR", help="Results go to DIR/<input-name>/.")
@click.option("--gpu", is_flag=True, help="Run each job on a peer with a free GPU.")
@click.option("--retries", type=click.IntRange(min=0), metavar="N", help="Run a job again elsewhere up to N times if its peer is lost (default: config retries).")
@click.option("--halt", callback=_halt_rule, metavar="WHEN,fail=N", help="now,fail=N: after N failures kill the rest; soon,fail=N: start no more.")
@click.option("--bar/--no-bar", default=None, help="Progress bar with ETA on stderr (default: on a terminal).")
@click.option("--joblog", metavar="FILE", help="Write a GNU parallel style job log (tab-separated) to FILE.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout (job output goes to stderr).")
@click.argument("script")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def map_cmd(pattern, max_jobs, files, out_dir, gpu, retries, halt, bar, joblog, as_json, script, args):
    import glob
    import signal as _signal
    import threading

    inputs = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
    if not inputs:
        raise HomieError(f"no inputs match {pattern!r}", EXIT_USAGE)
    _check_inputs(script, files, None)
    _check_args(list(args))
    _check_out_dir(out_dir)
    if retries is None:
        retries = _client().request("status").get("retries", 2)
    log = _JobLog(joblog) if joblog else None
    names = _input_names(inputs)
    gate = threading.Semaphore(max_jobs if max_jobs > 0 else len(inputs))
    m = _MapRun(inputs, halt)
    bar = _MapBar(len(inputs)) if (bar if bar is not None else sys.stderr.isatty()) else None
    out_lock = threading.Lock()

    def interrupted(signum, frame):
        m.interrupts += 1
        m.stopping = True
        if m.interrupts == 1:
            click.echo(f"\n{ARROW} cancelling {len(m.ids)} job(s) of this map (Ctrl-C again kills them)", err=True)
            m.kill_all(int(_signal.SIGTERM))
        elif m.interrupts == 2:
            click.echo(f"\n{ARROW} killing every job of this map", err=True)
            m.kill_all(int(_signal.SIGKILL))
        else:
            os._exit(130)

    _signal.signal(_signal.SIGINT, interrupted)

    def write(stream: int, text: bytes) -> None:
        out = sys.stderr if stream == 2 or as_json else sys.stdout
        with out_lock:
            if bar:
                bar.print(text.decode(errors="replace"), out)
            else:
                out.buffer.write(text)
                out.flush()

    def one(seq: int, path: str) -> None:
        with gate:
            if m.stopping:
                m.record(path, {"state": "cancelled", "peer": None, "exit_code": None, "why": "not started"})
                return
            _map_one(seq, path, names[path], script, args, files, gpu, retries, out_dir, m, write, log)
        if bar:
            bar.advance(m)

    threads = [threading.Thread(target=one, args=(i, p), daemon=True) for i, p in enumerate(inputs, 1)]
    for t in threads:
        t.start()
    for t in threads:
        while t.is_alive():
            t.join(0.2)  # short joins: Ctrl-C reaches the handler at once
    if bar:
        bar.close()
    _map_summary(m, inputs, as_json, out_dir, names)
    if m.interrupts:
        sys.exit(130)
    sys.exit(EXIT_MAP_FAILED if m.failed else 0)


def _map_one(seq, path, name, script, args, files, gpu, retries, out_dir, m, write, log) -> None:
    from homie import protocol

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
    peer, sent, started = "?", 0, time.time()
    out = {"state": "failed", "peer": None, "exit_code": None, "why": "no answer", "job_id": None}
    partial = {1: b"", 2: b""}
    try:
        for ev in _client(timeout=None).stream("run", **req):
            if isinstance(ev, protocol.Output):
                lines = (partial[ev.stream] + ev.data).split(b"\n")
                partial[ev.stream] = lines.pop()
                if lines:
                    write(ev.stream, b"".join(f"[{peer} {name}] ".encode() + ln + b"\n" for ln in lines))
            elif isinstance(ev, protocol.Message) and ev.t == "event":
                if ev.get("kind") == "job":
                    out["job_id"] = ev["job_id"]
                    with m.lock:
                        m.ids[path] = ev["job_id"]
                    if m.stopping:  # Ctrl-C came while this one was being queued
                        m.kill_all(15)
                elif ev.get("kind") == "sending":
                    peer, sent = ev["peer"], ev.get("bytes") or 0
            elif isinstance(ev, protocol.Message) and ev.t == "reply":
                end = ev.body
                ok = end["state"] == "done" and end.get("code") == 0
                received = 0
                if end["state"] == "done" and end.get("results"):
                    for p in _deliver(end["results"], end["results_dir"], os.path.join(out_dir, name), end["job_id"]):
                        received += os.path.getsize(p)
                why = "ok" if ok else (end.get("message") or end.get("reason") or f"exit {end.get('exit_code')}")
                out = {"state": "ok" if ok else end["state"] if end["state"] != "done" else "failed",
                       "peer": end.get("peer") or peer, "exit_code": end.get("exit_code"), "why": why,
                       "job_id": end["job_id"], "signal": end.get("signal"), "received": received}
    except HomieError as e:
        out.update(exit_code=e.exit_code, why=str(e), peer=peer if peer != "?" else None)
    except OSError as e:
        out.update(exit_code=72, why=f"cannot save results: {e}")
    out.update(input=path, sent=sent, started=started, runtime=time.time() - started)
    m.record(path, out)
    if log:
        log.write(seq, out, ["homie", "run", script, *job_args])


class _JobLog:
    """GNU parallel's --joblog format: one tab-separated line per finished job."""

    HEADER = "Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand\n"

    def __init__(self, path: str):
        import threading

        try:
            self.f = open(path, "w", encoding="utf-8")
        except OSError as e:
            raise HomieError(f"cannot write the job log {path}: {e.strerror}", EXIT_USAGE) from None
        self.f.write(self.HEADER)
        self.f.flush()
        self.lock = threading.Lock()

    def write(self, seq: int, out: dict, argv: list[str]) -> None:
        import shlex

        code = out.get("exit_code")
        line = (f"{seq}\t{out.get('peer') or ':'}\t{out['started']:.3f}\t{out['runtime']:.3f}\t{out.get('sent') or 0}"
                f"\t{out.get('received') or 0}\t{code if code is not None else -1}\t{out.get('signal') or 0}"
                f"\t{shlex.join(argv)}\n")
        with self.lock:
            self.f.write(line)
            self.f.flush()


class _MapBar:
    """parallel's --bar: done/total, failures, ETA, on stderr."""

    def __init__(self, total: int):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        self.console = Console(stderr=True)
        self.progress = Progress("map", BarColumn(), MofNCompleteColumn(), "{task.fields[failed]} failed",
                                 "ETA", TimeRemainingColumn(), console=self.console, transient=True)
        self.task = self.progress.add_task("map", total=total, failed=0)
        self.progress.start()

    def print(self, text: str, out) -> None:
        if out is sys.stderr:
            # through rich, so the bar is redrawn below the line instead of through it
            self.console.print(text, end="", markup=False, highlight=False, soft_wrap=True)
        else:
            out.write(text)
            out.flush()

    def advance(self, m: _MapRun) -> None:
        self.progress.update(self.task, advance=1, failed=m.failed)

    def close(self) -> None:
        self.progress.stop()


def _map_summary(m: _MapRun, inputs: list[str], as_json: bool, out_dir: str, names: dict) -> None:
    ok = [p for p in inputs if m.outcome.get(p, {}).get("state") == "ok"]
    if as_json:
        click.echo(json.dumps({
            "inputs": len(inputs), "ok": len(ok), "failed": m.failed,
            "jobs": [{"input": p, "job_id": m.outcome.get(p, {}).get("job_id"),
                      "peer": m.outcome.get(p, {}).get("peer"), "state": m.outcome.get(p, {}).get("state", "failed"),
                      "exit_code": m.outcome.get(p, {}).get("exit_code"),
                      "message": None if p in ok else m.outcome.get(p, {}).get("why"),
                      "results_dir": os.path.join(out_dir, names[p])} for p in inputs]}, indent=2))
    by_peer: dict[str, int] = {}
    for p in inputs:
        peer = m.outcome.get(p, {}).get("peer")
        if peer:
            by_peer[peer] = by_peer.get(peer, 0) + 1
    spread = ", ".join(f"{n} on {k}" for k, n in sorted(by_peer.items()))
    _say(f"{len(inputs)} inputs: {len(ok)} ok, {m.failed} failed" + (f"; ran {spread}" if spread else ""))
    for p in inputs:
        if p not in ok:
            o = m.outcome.get(p, {"why": "no answer"})
            click.echo(f"   {o.get('state', 'failed')}: {p}: {_printable(str(o.get('why')))}", err=True)


def _input_names(inputs: list[str]) -> dict[str, str]:
    """results/<input-name>/: the file name, or the relative path when names repeat."""
    base = {p: os.path.basename(p) for p in inputs}
    counts: dict[str, int] = {}
    for b in base.values():
        counts[b] = counts.get(b, 0) + 1
    return {p: (b if counts[b] == 1 else os.path.normpath(p).replace(os.sep, "_")) for p, b in base.items()}


@main.command(epilog=_example("homie top", "homie top --once"))
@click.option("--once", is_flag=True, help="Print one frame and exit (no terminal needed).")
@click.option("--interval", type=click.FloatRange(min=0.1), default=0.5, show_default=True, metavar="SECONDS",
              help="Refresh period in seconds.")
def top(once, interval):
    """A live view of peers and jobs (q quits)."""
    from homie.top import run_top

    run_top(_client, once=once, interval=interval)


def _register_extras() -> None:
    from homie.cli_service import service

    main.add_command(service)


_register_extras()
