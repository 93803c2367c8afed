"""Manifests and path safety: what a name from the network may be.

Every name that crosses the network goes through :func:`validate_manifest`
(or :func:`check_relpath` for one path): hostile manifests (escapes, control
characters, case/normalisation twins, a file that is also a directory, lying
types) are refused here, before anything touches a disk.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from homie.errors import ManifestError

GiB = 1 << 30
MiB = 1 << 20

# Only the exec bit is carried: other bits (setuid, group/other write) are
# either dangerous on the receiving side or meaningless across machines.
MODE_FILE = 0o644
MODE_EXEC = 0o755
_MODES = (MODE_FILE, MODE_EXEC)

# The job directory's ".homie" is homie's own (logs, the job's env file, ...):
# a manifest may not write into it and results never include it.
RESERVED_DIR = ".homie"

# Skipped at any depth when a directory is sent. Kept deliberately small so
# that nothing surprising is dropped; everything else goes in .homieignore.
DEFAULT_SKIP_DIRS = frozenset({".git", ".venv", "__pycache__"})

_HEX = frozenset("0123456789abcdef")
_FIELDS = {"path": str, "mode": int, "size": int, "sha256": str}


@dataclass(frozen=True)
class FileEntry:
    path: str  # posix relative path, already validated
    mode: int  # MODE_FILE or MODE_EXEC
    size: int
    sha256: str  # 64 lowercase hex digits

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "mode": self.mode, "size": self.size, "sha256": self.sha256}

    @classmethod
    def from_dict(cls, d: Any) -> FileEntry:
        """Build one entry from untrusted data, with the same checks as a manifest."""
        return validate_manifest([d])[0]


def _show(s: str, limit: int = 80) -> str:
    # repr() escapes control characters, so a hostile name cannot break the
    # one-line error message or a terminal.
    return repr(s if len(s) <= limit else s[:limit] + "...")


def _fold(component: str) -> str:
    # Canonical caseless matching (Unicode ch. 3.13): NFC before casefold so
    # that composed and decomposed forms agree, NFC after because casefold can
    # denormalise. Matches what case-insensitive / normalising filesystems
    # (APFS, HFS+, NTFS, SMB shares) would consider the same name.
    return unicodedata.normalize("NFC", unicodedata.normalize("NFC", component).casefold())


def check_relpath(path: Any, *, max_name_len: int = 255, max_path_len: int = 1024) -> str:
    """Check one relative path from an untrusted source; return it unchanged.

    Lengths are in UTF-8 bytes because that is what the filesystem limits
    (NAME_MAX, PATH_MAX) count.
    """
    if not isinstance(path, str):
        raise ManifestError(f"path must be a string, not {type(path).__name__}")
    if not path:
        raise ManifestError("empty path")
    try:
        encoded = path.encode("utf-8")
    except UnicodeEncodeError:
        # Lone surrogates: valid in JSON, impossible to create on disk.
        raise ManifestError(f"path {_show(path)} is not valid Unicode") from None
    if len(encoded) > max_path_len:
        raise ManifestError(f"path {_show(path)} is longer than {max_path_len} bytes")
    if path.startswith("/"):
        raise ManifestError(f"absolute path {_show(path)}")
    if "\\" in path:
        raise ManifestError(f"backslash in path {_show(path)}")
    for ch in path:
        # Category Cc: C0 controls, DEL and the C1 controls. NUL would
        # truncate the name in the OS; the rest are terminal and log hazards.
        if ch < " " or unicodedata.category(ch) == "Cc":
            raise ManifestError(f"control character in path {_show(path)}")
    parts = path.split("/")
    for part in parts:
        if part in ("", ".", ".."):
            raise ManifestError(f"path {_show(path)} has an empty, '.' or '..' component")
        if len(part.encode("utf-8")) > max_name_len:
            raise ManifestError(f"name {_show(part)} in path {_show(path)} is longer than {max_name_len} bytes")
    if _fold(parts[0]) == RESERVED_DIR:
        raise ManifestError(f"path {_show(path)} is inside {RESERVED_DIR!r}, which is reserved for homie")
    return path


def validate_manifest(
    raw: Any,
    *,
    max_files: int = 20000,
    max_total_bytes: int = 64 * GiB,
    max_name_len: int = 255,
    max_path_len: int = 1024,
) -> list[FileEntry]:
    """Validate a manifest received from the network; return entries sorted by path.

    Raises only ManifestError, whatever ``raw`` is.
    """
    if not isinstance(raw, list):
        raise ManifestError(f"manifest must be a list, not {type(raw).__name__}")
    # Before looking at any entry: a huge list is refused in O(1).
    if len(raw) > max_files:
        raise ManifestError(f"manifest has {len(raw)} files, more than the limit of {max_files}")
    entries: list[FileEntry] = []
    total = 0
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise ManifestError(f"manifest entry {i} must be an object, not {type(item).__name__}")
        if set(item) != set(_FIELDS):
            missing = sorted(set(_FIELDS) - set(item))
            extra = sorted(repr(k)[:40] for k in set(item) - set(_FIELDS))
            what = f"missing {', '.join(missing)}" if missing else f"unknown field {', '.join(extra)}"
            raise ManifestError(f"manifest entry {i}: {what}")
        for name, typ in _FIELDS.items():
            # bool is an int subclass; JSON true must not pass as size 1.
            if not isinstance(item[name], typ) or isinstance(item[name], bool):
                raise ManifestError(f"manifest entry {i}: {name} must be {typ.__name__}")
        path = check_relpath(item["path"], max_name_len=max_name_len, max_path_len=max_path_len)
        mode, size, sha = item["mode"], item["size"], item["sha256"]
        if mode not in _MODES:
            raise ManifestError(f"{_show(path)}: mode must be 0o644 or 0o755")
        if size < 0:
            raise ManifestError(f"{_show(path)}: negative size")
        if len(sha) != 64 or not _HEX.issuperset(sha):
            raise ManifestError(f"{_show(path)}: sha256 must be 64 lowercase hex digits")
        total += size
        if total > max_total_bytes:
            raise ManifestError(f"manifest totals more than the limit of {max_total_bytes} bytes")
        entries.append(FileEntry(path, mode, size, sha))
    _check_collisions(e.path for e in entries)
    entries.sort(key=lambda e: e.path)
    return entries


def _check_collisions(paths: Iterable[str]) -> None:
    """Refuse duplicates, case/normalisation twins, and a file that is also a directory."""
    files: dict[tuple[str, ...], str] = {}
    dirs: dict[tuple[str, ...], str] = {}  # folded prefix -> first path seen under it
    for path in paths:
        key = tuple(_fold(p) for p in path.split("/"))
        other = files.get(key)
        if other is not None:
            if other == path:
                raise ManifestError(f"duplicate path {_show(path)}")
            raise ManifestError(
                f"paths {_show(other)} and {_show(path)} collide (same name ignoring case/normalisation)"
            )
        if key in dirs:
            raise ManifestError(f"{_show(path)} is both a file and a directory (see {_show(dirs[key])})")
        files[key] = path
        parts = path.split("/")
        for n in range(1, len(key)):
            prefix = key[:n]
            if prefix in files:
                raise ManifestError(f"{_show(files[prefix])} is both a file and a directory (see {_show(path)})")
            seen = dirs.setdefault(prefix, path)
            # "A/x" and "a/y": one directory on macOS, two on Linux.
            if seen.split("/")[:n] != parts[:n]:
                raise ManifestError(
                    f"paths {_show(seen)} and {_show(path)} collide (same directory name ignoring case/normalisation)"
                )



def _check_sha(sha: Any) -> str:
    # Also what keeps a hash from being a path: "../../x" fails here.
    if not isinstance(sha, str) or len(sha) != 64 or not _HEX.issuperset(sha):
        raise ManifestError(f"invalid sha256 {_show(str(sha))}")
    return sha
