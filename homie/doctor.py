"""`homie doctor`: each check says what it found and how to fix it."""

from __future__ import annotations


def _f(ok: bool, check: str, finding: str, fix: str | None = None, warn: bool = False) -> dict:
    return {"ok": ok, "check": check, "finding": finding, "fix": fix, "warn": warn}


def offline_findings(home) -> list[dict]:
    """Checks that need no daemon: the key and the config."""
    from homie import keys
    from homie.config import load_config
    from homie.errors import HomieError

    out = []
    try:
        k = keys.load_key(home.key)
        out.append(_f(True, "key", f"group key present ({keys.fingerprint(k)}), file mode 0600"))
    except HomieError as e:
        out.append(_f(False, "key", str(e), "homie init (new group) or homie join KEY (a friend's group)"))
    try:
        cfg = load_config(home.config)
        out.append(_f(True, "config", f"{home.config} is valid (name {cfg.name!r})"))
    except HomieError as e:
        out.append(_f(False, "config", str(e), f"edit {home.config}"))
    return out


def diagnose(node) -> list[dict]:
    return []
