"""Saving one setting (`homie config`, `homie init`): the file is edited in place where that is
safe, keeping its comments, validated as a whole and written atomically with mode 0600."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from homie.config.keys import SPECS, Config
from homie.config.load import _build, _coerce, _from_file, _read_yaml, _unknown
from homie.config.values import _Bad, _error


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    from homie.files.atomic import atomic_write  # homie.files is heavy: only when writing

    atomic_write(path, text.encode("utf-8"), mode=0o600)


def _edit_text(text: str, key: str, new_raw: dict) -> str | None:
    """Replace/append one top-level line, keeping comments; None if that is unsafe."""
    import yaml

    line = "" if key not in new_raw else yaml.safe_dump(
        {key: new_raw[key]}, default_flow_style=False, sort_keys=False, allow_unicode=True, width=10**6
    )
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    try:
        node = yaml.compose(text) if text.strip() else None
    except yaml.YAMLError:
        return None
    start: int | None = None
    end = 0
    if isinstance(node, yaml.MappingNode) and not node.flow_style:
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode) and k.value == key and k.start_mark.column == 0:
                first: int = k.start_mark.line
                end = v.end_mark.line - 1 if v.end_mark.column == 0 else v.end_mark.line
                start, end = first, max(end, first)
    if start is not None:
        lines[start:end + 1] = [line]
    elif key in new_raw:
        lines.append(line)
    result = "".join(lines)
    try:
        check = yaml.safe_load(result) if result.strip() else {}
    except Exception:
        return None
    return result if (check or {}) == new_raw else None


def save_config_value(path: Path | str, key: str, value: Any) -> Config:
    """Set one setting in the YAML file, keeping the others (and comments where possible).

    value None removes the setting (back to its default). The value is validated,
    and so is the whole resulting file; the file is written atomically with mode
    0600. Returns the resulting Config (without command-line overrides).
    """
    path = Path(path)
    where = str(path)
    name = key.strip().replace("-", "_") if isinstance(key, str) else key
    if name not in SPECS:
        raise _error(where, None, _unknown(key))
    raw, text = _read_yaml(path)
    new_raw = dict(raw)
    if value is None:
        new_raw.pop(name, None)
    else:
        spec = SPECS[name]
        try:
            new_raw[name] = spec.check(_coerce(spec, value))
        except _Bad as e:
            raise _error(where, name, str(e)) from None
    cfg = _build(*_from_file(new_raw, where))
    new_text = _edit_text(text, name, new_raw)
    if new_text is None:
        import yaml

        new_text = yaml.safe_dump(new_raw, default_flow_style=False, sort_keys=False, allow_unicode=True)
    try:
        _atomic_write(path, new_text)
    except OSError as e:
        raise _error(where, None, f"cannot write the file ({e.strerror or e})") from None
    return cfg
