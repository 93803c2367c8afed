"""Property tests: hostile manifests only ever raise ManifestError, and whatever
validate_manifest accepts, SafeWriter writes entirely inside the job directory."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from homie.errors import ManifestError
from homie.files import SafeWriter, validate_manifest

from reliability import fuzz_budget

FUZZ = settings(max_examples=fuzz_budget(1500), deadline=None, suppress_health_check=[HealthCheck.too_slow])

SHA = hashlib.sha256(b"").hexdigest()

# Names built from the characters attacks are made of, plus ordinary ones, so
# that a good share of generated manifests is accepted and actually written.
_NASTY = ["..", ".", "", "/", "\\", "\x00", "\n", "\x7f", "\x85", "A", "a", "é", "e\u0301", "ß", "ss",
          "\u212b", "\u00c5", ".homie", " ", "~", "$HOME", "\ud800", "C:", "%2e%2e"]
component = st.one_of(
    st.sampled_from(_NASTY),
    st.text(alphabet=st.sampled_from(list("abAB.-_ é/\\\x00\x01")), min_size=0, max_size=6),
    st.text(max_size=4),
)
path = st.lists(component, min_size=1, max_size=5).map("/".join) | st.text(max_size=20)

good_entry = st.fixed_dictionaries({
    "path": path,
    "mode": st.sampled_from([0o644, 0o755, 0o600, 0o4755, 420, -1]),
    "size": st.one_of(st.integers(0, 10), st.integers(-5, 2**70)),
    "sha256": st.sampled_from([SHA, SHA.upper(), SHA[:-1], "z" * 64, ""]),
})

# Mostly-valid entries for the writer test: fields are right, names are
# drawn so that collisions ("A" vs "a", composed vs decomposed) and the odd
# hostile component still occur, but most manifests pass and get written.
_plain = st.lists(
    st.sampled_from(list("abcdxyzAB0.-_ é~$") + ["e\u0301", "\u00c5", "\u212b", "ß"]), min_size=1, max_size=8
).map("".join)
_unicode = st.text(st.characters(min_codepoint=0x20, blacklist_categories=("Cs", "Cc")), min_size=1, max_size=6)

@st.composite
def writable_component(draw):
    # About one component in forty is hostile: enough to keep exercising the
    # refusals, rare enough that most manifests are accepted and written.
    if draw(st.integers(0, 39)) == 0:
        return draw(st.sampled_from(_NASTY))
    return draw(_plain | _unicode)


writable_entry = st.fixed_dictionaries({
    "path": st.lists(writable_component(), min_size=1, max_size=3).map("/".join),
    "mode": st.sampled_from([0o644, 0o755]),
    "size": st.integers(0, 10),
    "sha256": st.just(SHA),
})

json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=10),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=20,
)
# Entries with the right keys but any JSON value in them, or any keys at all.
mutated_entry = st.dictionaries(
    st.sampled_from(["path", "mode", "size", "sha256", "extra"]), json_value | path, max_size=5
)
manifest = st.one_of(
    json_value,
    st.lists(st.one_of(good_entry, mutated_entry, json_value), max_size=8),
    st.lists(good_entry, max_size=8),
)


@FUZZ
@given(manifest)
def test_validate_manifest_only_raises_manifest_error(raw):
    try:
        entries = validate_manifest(raw, max_files=6, max_total_bytes=1000)
    except ManifestError as e:
        assert "\n" not in str(e)
        return
    assert [e.path for e in entries] == sorted(e.path for e in entries)


def _inside(p: str, root: str) -> bool:
    return os.path.commonpath([os.path.realpath(p), root]) == root


@FUZZ
@given(st.lists(writable_entry, min_size=1, max_size=8))
def test_accepted_manifests_write_inside_root(raw):
    try:
        entries = validate_manifest(raw)
    except ManifestError:
        assume(False)
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = os.path.realpath(os.path.join(tmp, "job"))
        os.mkdir(root)
        w = SafeWriter(root)
        for e in entries:
            with w.open_new(e.path, e.mode) as f:
                f.write(e.path.encode())
        written = []
        for dirpath, _, filenames in os.walk(tmp):
            for name in filenames:
                full = os.path.join(dirpath, name)
                assert _inside(full, root)
                written.append(Path(os.path.relpath(full, root)).as_posix())
        # Every entry landed exactly where it said, and nothing else exists.
        assert sorted(written) == [e.path for e in entries]
        for e in entries:
            assert Path(root, e.path).read_bytes() == e.path.encode()


@settings(max_examples=fuzz_budget(300), deadline=None)
@given(
    st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=4).map("/".join),
    st.integers(0, 3),
    st.booleans(),
)
def test_planted_symlinks_never_escape(relpath, depth, to_file):
    """A symlink planted at any component of the target path stops the write."""
    with tempfile.TemporaryDirectory() as tmp:
        root, outside = os.path.join(tmp, "job"), os.path.join(tmp, "outside")
        os.mkdir(root)
        os.mkdir(outside)
        parts = relpath.split("/")
        depth = min(depth, len(parts) - 1)
        parent = os.path.join(root, *parts[:depth])
        os.makedirs(parent, exist_ok=True)
        target = os.path.join(outside, "f") if to_file else outside
        os.symlink(target, os.path.join(parent, parts[depth]))
        w = SafeWriter(root)
        with pytest.raises(ManifestError):
            w.open_new(relpath)
        with pytest.raises(ManifestError):
            w.link_or_copy_new(__file__, relpath)
        assert os.listdir(outside) == []
