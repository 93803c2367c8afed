"""Config values only the running system can judge (users, plugins, addresses).

homie.config checks each value's shape; these need the machine: a `job_user`
that exists, a scheduler or executor some plugin provides, a bind address
this machine holds. `homie up` refuses to start on the first problem (one
line, exit 2) and `homie doctor` lists them all, so neither a traceback in
daemon.err nor a silently ignored setting is ever the first sign.
"""

from __future__ import annotations

BUILTIN_SCHEDULERS = ("auto", "best-idle", "gpu-first", "karma")


def schedulers() -> list[str] | None:
    """Scheduler names: the built-ins and those plugins declare in a SCHEDULERS tuple;
    None when a plugin chooses peers without declaring its names (any name may be its)."""
    from homie import plugins

    names = list(BUILTIN_SCHEDULERS)
    for plugin in plugins.pm.get_plugins():
        declared = getattr(plugin, "SCHEDULERS", None)
        if declared is None:
            builtin = str(plugins.pm.get_name(plugin)).startswith("homie.builtin")
            if not builtin and hasattr(plugin, "homie_choose_peer"):
                return None
            continue
        for n in declared:
            if isinstance(n, str) and n not in names:
                names.append(n)
    return names


def executors() -> list[str]:
    from homie import plugins

    names = ["auto"]
    for group in plugins.call("homie_executors") or []:
        for cls in group or []:
            n = getattr(cls, "name", None)
            if isinstance(n, str) and n not in names:
                names.append(n)
    return names


def check_scheduler(name: str) -> str | None:
    known = schedulers()
    return None if known is None or name in known else f"unknown scheduler {name!r} (known: {', '.join(known)})"


def check_executor(name: str) -> str | None:
    known = executors()
    return None if name in known else f"unknown executor {name!r} (known: {', '.join(known)})"


def check_job_user(name: str | None) -> str | None:
    import pwd

    if name is None:
        return None
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        return f"no user {name!r} on this machine (jobs run as job_user)"
    if pw.pw_uid == 0:
        return f"{name!r} is root: jobs never run as root; use an unprivileged user such as nobody"
    return None


def config_problems(config) -> list[tuple[str, str]]:
    """(setting, problem) for each setting this machine cannot honour."""
    from homie import plugins

    plugins.load_plugins(config.plugins, config.disable_plugins)
    out = []
    for key, why in (("job_user", check_job_user(config.job_user)),
                     ("scheduler", check_scheduler(config.scheduler)),
                     ("executor", check_executor(config.executor))):
        if why:
            out.append((key, why))
    return out


def check_bind(address: str) -> str | None:
    import socket

    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind((address, 0))
    except OSError as e:
        return f"{address} is not an address of this machine ({e.strerror})"
    finally:
        s.close()
    return None


def check_interface(name: str) -> str | None:
    import socket

    try:
        socket.if_nametoindex(name)
    except OSError:
        names = ", ".join(n for _, n in socket.if_nameindex())
        return f"no network interface {name!r} on this machine (there are: {names})"
    return None
