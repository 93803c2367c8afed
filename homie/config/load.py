"""Loading: defaults, then HOMIE_HOME/config.yaml, then command-line overrides, into a Config.

yaml is imported lazily (inside the functions that need it): the CLI must start fast.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from homie.config.keys import CONFIG_KEYS, SPECS, Config, KeySpec, _cross_check
from homie.config.values import _Bad, _error, _flag, _show
from homie.errors import ConfigError


def _read_yaml(path: Path) -> tuple[dict, str]:
    """The file's top-level mapping ({} if missing or empty) and its text."""
    where = str(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {}, ""
    except OSError as e:
        raise _error(where, None, f"cannot read the file ({e.strerror or e})") from None
    if not data.strip():
        return {}, ""
    import yaml

    loader = None
    try:
        loader = yaml.SafeLoader(data)
        node = loader.get_single_node()
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key_node, _ in node.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.tag == "tag:yaml.org,2002:str":
                    if key_node.value in seen:
                        raise _error(where, None, f"line {key_node.start_mark.line + 1}: "
                                     f"{key_node.value}: set twice")
                    seen.add(key_node.value)
        doc = loader.construct_document(node) if node is not None else None
    except ConfigError:
        raise
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        problem = e.problem or e.context or "invalid YAML"
        at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise _error(where, None, f"{at}invalid YAML: {problem}") from None
    except yaml.YAMLError as e:  # e.g. ReaderError: bad UTF-8, control characters
        first = (str(e).splitlines() or ["unreadable"])[0]
        raise _error(where, None, f"invalid YAML: {first}") from None
    except RecursionError:
        raise _error(where, None, "invalid YAML: nested too deeply") from None
    except Exception as e:  # e.g. ValueError for an impossible date like 2001-13-01
        raise _error(where, None, f"invalid YAML: {type(e).__name__}: {e}") from None
    finally:
        if loader is not None:
            loader.dispose()
    text = data.decode("utf-8", "replace")
    if doc is None:
        return {}, text
    if not isinstance(doc, dict):
        kinds: dict[type, str] = {list: "a list", str: "a string"}
        kind = kinds.get(type(doc), type(doc).__name__)
        raise _error(where, None, f"the top level must be a mapping of 'setting: value' lines (got {kind})")
    return doc, text


def _unknown(key: Any) -> str:
    import difflib

    if not isinstance(key, str):
        return f"{_show(key)}: unknown setting"
    guess = key.strip().lower().replace("-", "_")
    match = [guess] if guess in SPECS else difflib.get_close_matches(guess, list(SPECS), n=1, cutoff=0.6)
    hint = f" (did you mean '{match[0]}'?)" if match else ""
    shown = key if re.fullmatch(r"[\w.-]{1,60}", key) else _show(key)
    return f"{shown}: unknown setting{hint}"


def _coerce(spec: KeySpec, value: Any) -> Any:
    """Command-line strings to the setting's type; left alone when that fails."""
    if isinstance(value, tuple):
        return list(value)
    if not isinstance(value, str):
        return value
    text = value.strip()
    if spec.optional and text.lower() in ("", "none", "null"):
        return None
    try:
        if spec.type.startswith("int") and re.fullmatch(r"[+-]?[0-9]+", text):
            return int(text)
        if spec.type.startswith("float") and re.fullmatch(r"[+-]?[0-9_.eE+-]+", text):
            return float(text)
    except ValueError:
        return value
    if spec.type == "bool":
        low = text.lower()
        if low in ("true", "yes", "on", "1"):
            return True
        if low in ("false", "no", "off", "0"):
            return False
    return value


def _from_file(raw: Mapping[Any, Any], where: str) -> tuple[dict, dict]:
    values, sources = {}, {}
    for key, value in raw.items():
        if not isinstance(key, str) or key not in SPECS:
            raise _error(where, None, _unknown(key))
        try:
            values[key] = SPECS[key].check(value)
        except _Bad as e:
            raise _error(where, key, str(e)) from None
        sources[key] = where
    return values, sources


def _build(values: dict, sources: dict) -> Config:
    for spec in CONFIG_KEYS:
        if spec.name not in values:
            values[spec.name] = spec.default_value()
    _cross_check(values, sources)
    cfg = Config(**values)
    object.__setattr__(cfg, "_sources", dict(sources))
    return cfg


def load_config(path: Path | str | None = None, overrides: Mapping[str, Any] | None = None) -> Config:
    """Defaults, then the YAML file (if it exists), then overrides (None values ignored).

    path defaults to Home().config. Override keys are setting names ('-' or '_');
    command-line strings are converted to the setting's type ("5557" -> 5557,
    "a,b" -> ["a", "b"], "none" -> None for nullable settings). An override of
    interface or bind replaces the other one if that came from the file.
    Raises ConfigError (one line) for any problem.
    """
    if path is None:
        from homie.home import Home

        path = Home().config
    path = Path(path)
    raw, _ = _read_yaml(path)
    values, sources = _from_file(raw, str(path))
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        name = key.strip().replace("-", "_") if isinstance(key, str) else key
        if name not in SPECS:
            flag = _flag(name) if isinstance(name, str) else _show(name)
            raise _error(flag, None, _unknown(key))
        spec, flag = SPECS[name], _flag(name)
        try:
            values[name] = spec.check(_coerce(spec, value))
        except _Bad as e:
            raise _error(flag, None, str(e)) from None
        sources[name] = flag
        other = {"interface": "bind", "bind": "interface"}.get(name)
        if other and values.get(other) is not None and not sources.get(other, "").startswith("--"):
            del values[other]
            del sources[other]
    return _build(values, sources)
