"""The one plugin manager.

Built-ins are registered exactly like third-party plugins; the `homie`
entry-point group and the `plugins:` config key add more. A plugin whose hook
raises is reported and unregistered, never fatal to the daemon: `call()` runs
each implementation on its own instead of letting pluggy stop at the first error.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from typing import Any

import pluggy

from homie import __version__, hookspecs
from homie.errors import EXIT_USAGE, HomieError

DEFAULT_PLUGINS = (
    "homie.builtin.udp",
    "homie.builtin.static",
    "homie.builtin.probes",
    "homie.builtin.gpu",
    "homie.builtin.eligibility",
    "homie.builtin.best_idle",
    "homie.builtin.gpu_first",
    "homie.builtin.karma",
    "homie.builtin.executors",
)

ENTRY_POINT_GROUP = "homie"

pm = pluggy.PluginManager("homie")
pm.add_hookspecs(hookspecs)

_loaded = False
_lock = threading.Lock()
# plugin name -> why it was disabled (an exception text), shown by `homie plugins`
disabled: dict[str, str] = {}
_on_error: list[Callable[[str, str, BaseException], None]] = []  # e.g. the daemon's logger


def load_plugins(extra: tuple[str, ...] | list[str] = (), disable: tuple[str, ...] | list[str] = ()) -> None:
    """Register built-ins, entry points and `extra` modules. Idempotent."""
    global _loaded
    with _lock:
        if not _loaded:
            _loaded = True
            for name in DEFAULT_PLUGINS:
                if pm.get_plugin(name) is None:
                    pm.register(importlib.import_module(name), name=name)
            pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
        for name in extra:
            if pm.get_plugin(name) is None and name not in disabled:
                try:
                    pm.register(importlib.import_module(name), name=name)
                except Exception as e:  # a broken plugin must not stop the daemon
                    disabled[name] = f"import failed: {type(e).__name__}: {e}"
                    _report(name, "import", e)
        for name in disable:
            plugin = pm.get_plugin(name)
            if plugin is not None:
                pm.unregister(plugin)
                disabled[name] = "disabled by config"
        check_pending()


def check_pending() -> None:
    """A hook implementation whose name is no spec (a typo would otherwise do nothing
    at all, silently) is an error: `homie up` and `homie doctor` refuse with one line."""
    try:
        pm.check_pending()
    except pluggy.PluginValidationError:
        unknown = [(pm.get_name(impl.plugin) or repr(impl.plugin), name)
                   for name, caller in vars(pm.hook).items()
                   if hasattr(caller, "has_spec") and not caller.has_spec()
                   for impl in caller.get_hookimpls() if not impl.optionalhook]
        known = ", ".join(sorted(n for n in vars(hookspecs) if n.startswith("homie_")))
        what = "; ".join(f"plugin {plugin} implements {hook!r}" for plugin, hook in unknown)
        raise HomieError(f"{what}, which is no homie hook (a typo? the hooks are: {known})", EXIT_USAGE) from None


def on_error(callback) -> None:
    _on_error.append(callback)


def _report(plugin_name: str, hook_name: str, exc: BaseException) -> None:
    for cb in _on_error:
        try:
            cb(plugin_name, hook_name, exc)
        except Exception:
            pass


def call(hook_name: str, **kwargs) -> Any:
    """Call a hook, isolating each plugin.

    For firstresult hooks, the first non-None result; otherwise the list of
    non-None results in pluggy's call order. A raising plugin is unregistered
    and reported, and the call goes on with the others.
    """
    hook = getattr(pm.hook, hook_name)
    firstresult = hook.spec.opts.get("firstresult", False) if hook.spec else False
    results = []
    # pluggy calls the last-registered (and tryfirst) implementations first
    for impl in reversed(hook.get_hookimpls()):
        args = {name: kwargs[name] for name in impl.argnames if name in kwargs}
        try:
            res = impl.function(**args)
        except Exception as e:
            name = pm.get_name(impl.plugin) or repr(impl.plugin)
            disabled[name] = f"{hook_name} raised {type(e).__name__}: {e}"
            try:
                pm.unregister(impl.plugin)
            except ValueError:
                pass
            _report(name, hook_name, e)
            continue
        if res is None:
            continue
        if firstresult:
            return res
        results.append(res)
    return None if firstresult else results


def describe() -> list[dict]:
    """What `homie plugins` shows: each plugin with its hooks and version."""
    out = []
    for plugin in pm.get_plugins():
        name = pm.get_name(plugin)
        hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
        dist = None
        for p, d in pm.list_plugin_distinfo():
            if p is plugin:
                dist = d
        out.append({
            "name": name,
            "hooks": hooks,
            "version": getattr(dist, "version", None) if dist else (
                __version__ if str(name).startswith("homie.builtin") else getattr(plugin, "__version__", None)),
            "package": dist.project_name if dist else (
                "homie (built-in)" if str(name).startswith("homie.builtin") else None),
        })
    for name, why in disabled.items():
        out.append({"name": name, "hooks": [], "version": None, "package": None, "disabled": why})
    return sorted(out, key=lambda p: p["name"])
