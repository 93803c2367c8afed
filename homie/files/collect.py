"""Choosing what ``homie run`` ships: directory walks with ignore rules, globs, names."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from homie.errors import HomieError, ManifestError
from homie.files.manifest import DEFAULT_SKIP_DIRS, RESERVED_DIR, _check_collisions, check_relpath


class Collected(NamedTuple):
    files: list[tuple[str, Path]]  # (relative posix path, absolute path to read), sorted
    warnings: list[str]  # things skipped that the user may want to know about


def _is_inside(path: str, root: str) -> bool:
    try:
        return os.path.commonpath([path, root]) == root
    except ValueError:
        return False


def _rel_to(path: str, root: str) -> str | None:
    """path relative to root (posix) if inside it, lexically or after resolving links
    (only when lexically it is not: a realpath is an lstat per path component)."""
    for resolve in (os.path.abspath, os.path.realpath):
        p, r = resolve(path), resolve(root)
        if _is_inside(p, r) and p != r:
            return Path(os.path.relpath(p, r)).as_posix()
    return None


def _spec(lines: Iterable[str]):
    import pathspec  # only when a directory is walked: keeps CLI start-up light

    return pathspec.GitIgnoreSpec.from_lines(list(lines))


def _decide(spec, rel: str) -> bool | None:
    """True: ignored, False: explicitly re-included, None: no rule matched."""
    check = getattr(spec, "check_file", None)
    if check is not None:
        return check(rel).include
    for pattern in reversed(spec.patterns):  # pathspec < 0.12: last match wins
        if pattern.include is not None and pattern.match_file(rel) is not None:
            return pattern.include
    return None


def _read_ignore(path: str, warnings: list[str]) -> list[str] | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return None
    except OSError as e:
        warnings.append(f"could not read {path}: {e.strerror}")
        return None


def _walk_dir(root: str, extra_ignore: Sequence[str], warnings: list[str]) -> list[tuple[str, Path]]:
    real_root = os.path.realpath(root)
    # Priority: extra patterns (command line / config) > .homieignore > the
    # nearest .gitignore. .homieignore can therefore re-include data files
    # that git ignores ("!data/*.csv"), which is the usual reason to have one.
    top: list = []
    if extra_ignore:
        top.append(_spec(extra_ignore))
    homie_lines = _read_ignore(os.path.join(root, ".homieignore"), warnings)
    if homie_lines:
        top.append(_spec(homie_lines))

    def ignored(rel: str, gitspecs: list[tuple[str, Any]], is_dir: bool) -> bool:
        probe = rel + "/" if is_dir else rel
        for spec in top:
            d = _decide(spec, probe)
            if d is not None:
                return d
        for base, spec in reversed(gitspecs):  # deepest .gitignore first
            d = _decide(spec, probe[len(base) + 1 :] if base else probe)
            if d is not None:
                return d
        return False

    out: list[tuple[str, Path]] = []
    stack: list[tuple[str, list[tuple[str, Any]]]] = [("", [])]
    while stack:
        rel_dir, gitspecs = stack.pop()
        abs_dir = os.path.join(root, rel_dir) if rel_dir else root
        lines = _read_ignore(os.path.join(abs_dir, ".gitignore"), warnings)
        if lines:
            gitspecs = gitspecs + [(rel_dir, _spec(lines))]
        try:
            entries = sorted(os.scandir(abs_dir), key=lambda e: e.name)
        except OSError as e:
            warnings.append(f"skipped unreadable directory {abs_dir}: {e.strerror}")
            continue
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            try:
                is_link = entry.is_symlink()
                is_dir = entry.is_dir(follow_symlinks=False)
            except OSError:
                continue
            # By name whatever the type: a submodule's .git is a file, and a
            # .venv is often a symlink.
            if entry.name in DEFAULT_SKIP_DIRS or (not rel_dir and entry.name == RESERVED_DIR):
                continue
            if is_dir:
                if not ignored(rel, gitspecs, True):
                    stack.append((rel, gitspecs))
                continue
            if ignored(rel, gitspecs, False):
                continue
            if is_link:
                target = os.path.realpath(entry.path)
                if not _is_inside(target, real_root):
                    warnings.append(f"skipped symlink {rel}: it points outside {root}")
                elif os.path.isdir(target):
                    warnings.append(f"skipped symlink {rel}: it points to a directory")
                elif not os.path.isfile(target):
                    warnings.append(f"skipped symlink {rel}: its target is missing or not a regular file")
                else:
                    out.append((rel, Path(target)))
                continue
            try:
                regular = entry.is_file(follow_symlinks=False)
            except OSError:
                regular = False
            if not regular:
                # FIFOs would block the reader forever; sockets and devices make no sense remotely.
                warnings.append(f"skipped {rel}: not a regular file")
                continue
            out.append((rel, Path(entry.path)))
    return out


def collect(
    sources: Iterable[str | os.PathLike] = (),
    *,
    directory: str | os.PathLike | None = None,
    base: str | os.PathLike | None = None,
    extra_ignore: Sequence[str] = (),
) -> Collected:
    """Decide which local files a job ships, and under which relative names.

    ``directory`` is walked honouring ``.gitignore`` files at every level,
    ``.homieignore`` at its root and ``extra_ignore`` (gitignore syntax), and
    always skipping ``.git``, ``.venv`` and ``__pycache__`` (plus a top-level
    ``.homie``, which is reserved in the job directory). Symlinked directories
    are not followed; a symlinked file is sent with its target's contents
    when the target is inside the directory, and skipped with a warning
    otherwise.

    ``sources`` are files or glob patterns (``**`` recurses). A file inside
    ``directory`` keeps its path there; otherwise it is named relative to
    ``base`` (default: the current directory) when inside it, else by its
    basename. Explicitly named symlinks are followed: the user asked for them.
    """
    warnings: list[str] = []
    by_rel: dict[str, Path] = {}
    dir_str = os.path.abspath(directory) if directory is not None else None
    base_str = os.path.abspath(base) if base is not None else os.getcwd()

    def add(rel: str, path: Path, origin: str) -> None:
        prev = by_rel.get(rel)
        if prev is not None and os.path.realpath(prev) != os.path.realpath(path):
            raise HomieError(f"{prev} and {path} would both be sent as {rel!r}{origin}")
        by_rel[rel] = path

    if dir_str is not None:
        if not os.path.isdir(dir_str):
            raise HomieError(f"directory not found: {directory}")
        for walked, path in _walk_dir(dir_str, extra_ignore, warnings):
            add(walked, path, "")

    for src in sources:
        src = os.fspath(src)
        if any(c in src for c in "*?["):
            matches = sorted(m for m in glob.glob(src, recursive=True) if os.path.isfile(m))
            if not matches:
                raise HomieError(f"no files match {src!r}")
        else:
            if not os.path.exists(src):
                raise HomieError(f"file not found: {src}")
            if not os.path.isfile(src):
                raise HomieError(f"not a regular file: {src}")
            matches = [src]
        for m in matches:
            rel = None
            if dir_str is not None:
                rel = _rel_to(m, dir_str)
            if rel is None:
                rel = _rel_to(m, base_str)
            if rel is None:
                rel = os.path.basename(os.path.abspath(m))
            add(rel, Path(os.path.abspath(m)), f" (from {src!r})")

    # Fail here with the local file name rather than on the worker: the
    # worker would refuse these names (e.g. "Makefile" next to "makefile").
    hint = " (rename it, or add it to .homieignore)"
    for rel in by_rel:
        try:
            check_relpath(rel)
        except ManifestError as e:
            raise HomieError(f"cannot send {by_rel[rel]}: {e}{hint}") from None
    try:
        _check_collisions(by_rel)
    except ManifestError as e:
        raise HomieError(f"cannot send these files: {e}{hint}") from None
    return Collected(sorted(by_rel.items()), warnings)


def summarize(files: Iterable[tuple[str, Path]]) -> tuple[int, int]:
    """(number of files, total bytes): shown before a large upload."""
    count = total = 0
    for _, path in files:
        count += 1
        total += os.stat(path).st_size
    return count, total

