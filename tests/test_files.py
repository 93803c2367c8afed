"""Moving files: manifest attacks, safe writes, caches, collection, result detection."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

import pytest

from homie.errors import HomieError, ManifestError
from homie.files import (
    BlobCache,
    FileEntry,
    HashCache,
    SafeWriter,
    collect,
    summarize,
    validate_manifest,
)
from homie.worker import jobdir

SHA_EMPTY = hashlib.sha256(b"").hexdigest()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def entry(path="a.txt", mode=0o644, size=0, sha256=SHA_EMPTY, **extra):
    return {"path": path, "mode": mode, "size": size, "sha256": sha256, **extra}


def rejects(raw, match=None, **kw):
    with pytest.raises(ManifestError, match=match):
        validate_manifest(raw, **kw)


# --------------------------------------------------------------------------
# validate_manifest
# --------------------------------------------------------------------------


def test_accepts_and_sorts():
    got = validate_manifest([entry("z/b.py", 0o755, 3, sha(b"abc")), entry("a.txt")])
    assert [e.path for e in got] == ["a.txt", "z/b.py"]
    assert got[1] == FileEntry("z/b.py", 0o755, 3, sha(b"abc"))
    assert FileEntry.from_dict(got[1].to_dict()) == got[1]
    assert validate_manifest([]) == []


def test_unicode_names_are_fine():
    validate_manifest([entry("données/été.csv"), entry("日本/ファイル.txt"), entry("a b/c-d_e.txt")])


@pytest.mark.parametrize(
    "raw",
    [None, {}, "a.txt", 3, [None], ["a.txt"], [[entry()]], [entry(path=None)], [entry(path=b"a")],
     [entry(mode="644")], [entry(mode=0o600)], [entry(mode=0o4755)], [entry(mode=True)],
     [entry(size=-1)], [entry(size=1.0)], [entry(size=True)], [entry(size="1")],
     [entry(sha256=SHA_EMPTY.upper())], [entry(sha256=SHA_EMPTY[:-1])], [entry(sha256="g" * 64)],
     [entry(sha256=None)], [{"path": "a", "mode": 0o644, "size": 0}], [entry(extra=1)]],
)
def test_rejects_malformed(raw):
    rejects(raw)


@pytest.mark.parametrize(
    "path",
    ["/etc/passwd", "//x", "../x", "a/../../x", "a/..", "..", ".", "./a", "a/./b", "a//b", "a/", "", "/",
     "a\\b", "..\\x", "C:\\x", "a\x00b", "a\nb", "a\rb", "\x1b[31m", "a\x7fb", "a\x85b", "a\tb", "\ud800x"],
)
def test_rejects_hostile_paths(path):
    rejects([entry(path)])


def test_reserved_dir():
    rejects([entry(".homie/log")], "reserved")
    rejects([entry(".HOMIE/log")], "reserved")
    validate_manifest([entry("x/.homie/log"), entry(".homierc")])


def test_name_and_path_length():
    validate_manifest([entry("a" * 255)])
    rejects([entry("a" * 256)], "longer than 255")
    rejects([entry("é" * 128)], "longer than 255")  # 256 UTF-8 bytes
    rejects([entry("/".join(["abcdefghi"] * 103))], "longer than 1024")
    rejects([entry("abcd")], max_name_len=3)


@pytest.mark.parametrize(
    "a,b",
    [("a.txt", "a.txt"), ("A.txt", "a.txt"), ("caf\u00e9", "cafe\u0301"), ("STRASSE", "straße"),
     ("Dir/x", "dir/y"), ("a", "a/b"), ("a/b", "a"), ("x/A", "x/a/b"), ("\u212b", "\u00e5")],
)
def test_collisions(a, b):
    rejects([entry(a), entry(b)], "collide|duplicate|both a file and a directory")


def test_no_false_collisions():
    validate_manifest([entry("a/b"), entry("a/c"), entry("ab"), entry("a.b/c")])


def test_count_and_total_caps():
    rejects([entry(f"f{i}") for i in range(11)], "more than the limit of 10", max_files=10)
    validate_manifest([entry(f"f{i}") for i in range(10)], max_files=10)
    rejects([entry("a", size=60), entry("b", size=41)], "limit of 100 bytes", max_total_bytes=100)
    validate_manifest([entry("a", size=60), entry("b", size=40)], max_total_bytes=100)
    rejects([entry("a", size=2**80)], "limit")


def test_error_message_is_one_line():
    with pytest.raises(ManifestError) as ei:
        validate_manifest([entry("evil\nname\x1b[2J")])
    assert "\n" not in str(ei.value) and "\x1b" not in str(ei.value)


# --------------------------------------------------------------------------
# SafeWriter
# --------------------------------------------------------------------------


def test_safe_writer_writes_and_sets_mode(tmp_path):
    w = SafeWriter(tmp_path)
    with w.open_new("a/b/c.sh", 0o755) as f:
        f.write(b"#!/bin/sh\n")
    with w.open_new("a/d.txt") as f:
        f.write(b"x")
    assert (tmp_path / "a/b/c.sh").read_bytes() == b"#!/bin/sh\n"
    assert (tmp_path / "a/b/c.sh").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "a/d.txt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "a").stat().st_mode & 0o777 == 0o700
    with pytest.raises(ManifestError, match="already exists"):
        w.open_new("a/d.txt")
    with pytest.raises(ManifestError):
        w.open_new("../escape")
    with pytest.raises(ManifestError):
        w.open_new("a/d.txt/under-a-file")
    with pytest.raises(HomieError):
        SafeWriter(tmp_path / "missing")


@pytest.fixture
def jail(tmp_path):
    root = tmp_path / "job"
    outside = tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    return root, outside


def test_symlinked_directory_is_refused(jail):
    root, outside = jail
    os.symlink(outside, root / "data")
    w = SafeWriter(root)
    with pytest.raises(ManifestError, match="symlink"):
        w.open_new("data/x.txt")
    with pytest.raises(ManifestError, match="symlink"):
        w.open_new("data/deeper/x.txt")
    with pytest.raises(ManifestError):
        w.link_or_copy_new(__file__, "data/y.txt")
    assert list(outside.iterdir()) == []


def test_symlink_deep_in_tree_is_refused(jail):
    root, outside = jail
    (root / "a" / "b").mkdir(parents=True)
    os.symlink(outside, root / "a" / "b" / "c")
    with pytest.raises(ManifestError):
        SafeWriter(root).open_new("a/b/c/d/e.txt")
    assert list(outside.iterdir()) == []


def test_symlinked_file_is_not_followed(jail):
    root, outside = jail
    os.symlink(outside / "victim", root / "x.txt")  # dangling
    os.symlink(__file__, root / "y.txt")  # existing target
    w = SafeWriter(root)
    for name in ("x.txt", "y.txt"):
        with pytest.raises(ManifestError):
            w.open_new(name)
        with pytest.raises(ManifestError):
            w.link_or_copy_new(__file__, name)
    assert list(outside.iterdir()) == []


def test_link_or_copy(tmp_path):
    cache = BlobCache(tmp_path / "blobs", 1 << 20, fsync=False)
    data = b"hello"
    with cache.writer(sha(data), len(data)) as bw:
        bw.write(data)
    root = tmp_path / "job"
    root.mkdir()
    w = SafeWriter(root)
    assert w.link_or_copy_new(cache.path(sha(data)), "in/a.txt") is True
    assert os.path.samefile(root / "in/a.txt", cache.path(sha(data)))
    # Exec bit lives on the inode: must be a copy, not a link to the blob.
    assert w.link_or_copy_new(cache.path(sha(data)), "in/run.sh", 0o755) is False
    assert (root / "in/run.sh").read_bytes() == data
    assert (root / "in/run.sh").stat().st_mode & 0o777 == 0o755
    assert w.link_or_copy_new(cache.path(sha(data)), "c.txt", link=False) is False
    assert not os.path.samefile(root / "c.txt", cache.path(sha(data)))
    with pytest.raises(ManifestError, match="already exists"):
        w.link_or_copy_new(cache.path(sha(data)), "in/a.txt")


# --------------------------------------------------------------------------
# BlobCache
# --------------------------------------------------------------------------


def put(cache: BlobCache, data: bytes) -> str:
    h = sha(data)
    with cache.writer(h, len(data)) as w:
        for i in range(0, len(data), 7):
            w.write(data[i : i + 7])
    return h


def test_blob_roundtrip(tmp_path):
    cache = BlobCache(tmp_path, 1 << 20, fsync=True)
    h = put(cache, b"some content")
    assert cache.has(h)
    p = cache.path(h)
    assert p == tmp_path / h[:2] / h
    assert p.read_bytes() == b"some content"
    assert p.stat().st_mode & 0o777 == 0o444
    assert cache.total_bytes() == 12
    put(cache, b"some content")  # same blob twice: counted once
    assert cache.total_bytes() == 12
    # A fresh instance finds it with one scan.
    assert BlobCache(tmp_path, 1 << 20).total_bytes() == 12


@pytest.mark.parametrize(
    "declared_size,data",
    [(5, b"abc"), (3, b"abcdef"), (3, b"xyz")],
    ids=["short", "long", "wrong-content"],
)
def test_lying_blob_is_refused(tmp_path, declared_size, data):
    cache = BlobCache(tmp_path, 1 << 20, fsync=False)
    h = sha(b"abc"[:declared_size] if declared_size == 3 else b"abcde")
    with pytest.raises(ManifestError, match="content does not match its hash"):
        with cache.writer(h, declared_size) as w:
            w.write(data)
    assert not cache.has(h)
    assert not cache.path(h).exists()
    assert list((tmp_path / "tmp").iterdir()) == []
    assert cache.total_bytes() == 0


def test_failed_upload_leaves_nothing(tmp_path):
    cache = BlobCache(tmp_path, 1 << 20, fsync=False)
    h = sha(b"abcdef")
    with pytest.raises(ConnectionError):
        with cache.writer(h, 6) as w:
            w.write(b"abc")
            raise ConnectionError("link dropped")
    assert not cache.has(h) and list((tmp_path / "tmp").iterdir()) == []


def test_stale_temp_files_are_cleared(tmp_path):
    BlobCache(tmp_path, 100)
    (tmp_path / "tmp" / "leftover").write_bytes(b"x")
    BlobCache(tmp_path, 100)
    assert list((tmp_path / "tmp").iterdir()) == []


def test_bad_hash_is_not_a_path(tmp_path):
    cache = BlobCache(tmp_path, 100)
    for bad in ("../../etc/passwd", "A" * 64, "0" * 63, None):
        with pytest.raises(ManifestError):
            cache.path(bad)
        with pytest.raises(ManifestError):
            cache.writer(bad, 1)


def test_evict_lru_and_keep(tmp_path):
    cache = BlobCache(tmp_path, 30, fsync=False)
    blobs = [put(cache, bytes([i]) * 10) for i in range(4)]  # 40 bytes, cap 30
    cache.touch(blobs[0])  # now the most recently used
    assert cache.evict() == [blobs[1]]
    assert cache.total_bytes() == 30
    assert cache.evict() == []
    b4 = put(cache, b"z" * 10)
    # blobs[2] is the oldest but the current job uses it.
    assert cache.evict(keep={blobs[2]}) == [blobs[3]]
    assert all(cache.has(h) for h in (blobs[0], blobs[2], b4))
    assert not cache.has(blobs[1]) and not cache.path(blobs[1]).exists()


def test_evict_respects_pins_and_can_stay_over_cap(tmp_path):
    cache = BlobCache(tmp_path, 5, fsync=False)
    a, b = put(cache, b"a" * 10), put(cache, b"b" * 10)
    with cache.pinned([a]):
        assert cache.evict(keep={b}) == []
        assert cache.total_bytes() == 20
    assert cache.evict(keep={b}) == [a]


def test_recency_survives_restart_and_touch_keeps_mtime(tmp_path):
    cache = BlobCache(tmp_path, 20, fsync=False)
    a, b = put(cache, b"a" * 10), put(cache, b"b" * 10)
    mtime = cache.path(a).stat().st_mtime_ns
    time.sleep(0.01)
    cache.touch(a)
    # mtime is shared with hardlinks in job directories: it must not move.
    assert cache.path(a).stat().st_mtime_ns == mtime
    c = BlobCache(tmp_path, 20, fsync=False)
    put(c, b"c" * 10)
    assert c.evict() == [b]


def test_blob_deleted_behind_our_back(tmp_path):
    cache = BlobCache(tmp_path, 100, fsync=False)
    h = put(cache, b"abc")
    os.unlink(cache.path(h))
    assert not cache.has(h)
    assert cache.total_bytes() == 0


def test_blob_cache_threads(tmp_path):
    cache = BlobCache(tmp_path, 10**9, fsync=False)
    payloads = [os.urandom(1000) for _ in range(40)]

    def work(chunk):
        for p in chunk:
            put(cache, p)
            cache.touch(sha(p))

    threads = [threading.Thread(target=work, args=(payloads[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert cache.total_bytes() == 40_000
    assert all(cache.has(sha(p)) for p in payloads)


def test_a_blob_arriving_twice_never_takes_its_name_from_a_job_linking_it(tmp_path):
    """Four jobs of a map upload the same script at once, and each commits it.
    Replacing the cached inode under a concurrent link() made that link fail
    with ENOENT (the kernel will not link an inode whose last name just went):
    CI saw "cannot prepare the job directory: No such file or directory". A
    name given to a blob keeps its inode; the later copies are dropped."""
    cache = BlobCache(tmp_path / "blobs", 10**9, fsync=False)
    data = os.urandom(2000)
    h = put(cache, data)
    first = os.stat(cache.path(h)).st_ino
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    stop = threading.Event()
    errors: list[OSError] = []

    def link_like_a_job():
        i = 0
        while not stop.is_set():
            i += 1
            dst = jobs / f"job{i}.py"
            try:
                os.link(cache.path(h), dst)
            except OSError as e:
                errors.append(e)
                return
            os.unlink(dst)

    t = threading.Thread(target=link_like_a_job)
    t.start()
    try:
        for _ in range(3000):
            put(cache, data)
    finally:
        stop.set()
        t.join()
    assert errors == []
    assert os.stat(cache.path(h)).st_ino == first
    assert cache.path(h).read_bytes() == data and cache.total_bytes() == 2000
    assert os.listdir(tmp_path / "blobs" / "tmp") == []  # the later copies left nothing behind


def test_a_cached_blob_of_the_wrong_size_is_replaced_by_a_verified_upload(tmp_path):
    cache = BlobCache(tmp_path, 10**6, fsync=False)
    h = put(cache, b"right content")
    p = cache.path(h)
    p.chmod(0o644)
    p.write_bytes(b"torn")  # what a crash or a careless hand leaves
    put(cache, b"right content")
    assert p.read_bytes() == b"right content" and cache.total_bytes() == 13


# --------------------------------------------------------------------------
# HashCache
# --------------------------------------------------------------------------


def age(path: Path, seconds: float = 60) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t))


def test_hash_cache_does_not_reread(tmp_path):
    f = tmp_path / "big.bin"
    data = os.urandom(3 * 1024 * 1024 + 5)
    f.write_bytes(data)
    age(f)
    with HashCache(tmp_path / "hashes.db") as hc:
        assert hc.sha256_of(f) == (len(data), sha(data))
        assert hc.sha256_of(f) == (len(data), sha(data))
        assert hc.hashed == 1
    # Persisted across instances.
    with HashCache(tmp_path / "hashes.db") as hc:
        assert hc.sha256_of(f) == (len(data), sha(data))
        assert hc.hashed == 0


def test_hash_cache_sees_changes(tmp_path):
    f = tmp_path / "f.txt"
    f.write_bytes(b"one")
    age(f)
    hc = HashCache(tmp_path / "h.db")
    assert hc.sha256_of(f) == (3, sha(b"one"))
    f.write_bytes(b"two")  # same size, new mtime
    assert hc.sha256_of(f) == (3, sha(b"two"))
    # Same size *and* mtime put back (cp -p, rsync -t): ctime still differs.
    st = f.stat()
    f.write_bytes(b"333")
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert hc.sha256_of(f) == (3, sha(b"333"))
    assert hc.hashed == 3
    hc.close()


def test_hash_cache_does_not_trust_fresh_files(tmp_path):
    # Written "now": a second write within the same timestamp tick would not
    # change mtime, so the hash must not be remembered yet.
    f = tmp_path / "f.txt"
    f.write_bytes(b"abc")
    hc = HashCache(tmp_path / "h.db")
    hc.sha256_of(f)
    hc.sha256_of(f)
    assert hc.hashed == 2


def test_hash_cache_file_changing_while_read(tmp_path, monkeypatch):
    f = tmp_path / "f.bin"
    f.write_bytes(b"x" * 10)
    hc = HashCache(tmp_path / "h.db")
    real_fstat = os.fstat
    calls = {"n": 0}

    def growing_fstat(fd):
        # Each read sees the file grow: the writer never stops.
        calls["n"] += 1
        with open(f, "ab") as g:
            g.write(b"y")
        return real_fstat(fd)

    monkeypatch.setattr(os, "fstat", growing_fstat)
    with pytest.raises(ManifestError, match="changed while reading"):
        hc.sha256_of(f)
    assert hc.hashed == 3


def test_hash_cache_rejects_non_files(tmp_path):
    hc = HashCache(tmp_path / "h.db")
    with pytest.raises(HomieError):
        hc.sha256_of(tmp_path)
    with pytest.raises(FileNotFoundError):
        hc.sha256_of(tmp_path / "missing")


# --------------------------------------------------------------------------
# collect
# --------------------------------------------------------------------------


def mk(root: Path, *names: str) -> None:
    for n in names:
        p = root / n
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(n)


def rels(result) -> list[str]:
    return [r for r, _ in result.files]


def test_collect_directory_with_ignores(tmp_path):
    mk(tmp_path, "train.py", "model.ckpt", "notes.log", "keep.log", "src/a.py", "src/gen/out.txt",
       "src/gen/keep.txt", "src/b.tmp", "data/big.csv", "data/small.csv", ".git/config", ".venv/bin/python",
       "src/__pycache__/a.pyc", "deep/.git", ".homie/job.log", "x/.homie/ok.txt", "build/x.o", "src/build/y.o")
    (tmp_path / ".gitignore").write_text("*.log\n!keep.log\n*.ckpt\nbuild/\ndata/\n")
    (tmp_path / "src" / ".gitignore").write_text("gen/*\n!gen/keep.txt\n*.tmp\n")
    # .homieignore beats .gitignore: git ignores data/, but the job needs small.csv.
    (tmp_path / ".homieignore").write_text("!data/\ndata/big.csv\n")
    got = collect([], directory=tmp_path)
    assert rels(got) == sorted([
        ".gitignore", ".homieignore", "data/small.csv", "keep.log", "src/.gitignore", "src/a.py",
        "src/gen/keep.txt", "train.py", "x/.homie/ok.txt",
    ])
    assert all(p.is_absolute() and p.is_file() for _, p in got.files)
    assert got.warnings == []


def test_collect_extra_ignore(tmp_path):
    mk(tmp_path, "a.py", "b.py", "c.txt")
    assert rels(collect(directory=tmp_path, extra_ignore=["*.py", "!b.py"])) == ["b.py", "c.txt"]


def test_collect_symlinks(tmp_path):
    proj, other = tmp_path / "proj", tmp_path / "other"
    mk(proj, "real.txt", "sub/inner.txt")
    mk(other, "secret.txt", "d/x.txt")
    os.symlink(proj / "real.txt", proj / "alias.txt")
    os.symlink(other / "secret.txt", proj / "secret.txt")
    os.symlink(other / "d", proj / "linked_dir")
    os.symlink(proj / "nowhere", proj / "dangling")
    os.mkfifo(proj / "fifo")
    got = collect(directory=proj)
    assert rels(got) == ["alias.txt", "real.txt", "sub/inner.txt"]
    assert dict(got.files)["alias.txt"] == (proj / "real.txt").resolve()
    text = "\n".join(got.warnings)
    for name in ("secret.txt", "linked_dir", "dangling", "fifo"):
        assert name in text


def test_collect_sources(tmp_path, monkeypatch):
    mk(tmp_path, "proj/train.py", "proj/data/a.csv", "proj/data/b.csv", "proj/data/deep/c.csv", "elsewhere/cfg.yaml")
    monkeypatch.chdir(tmp_path / "proj")
    got = collect(["train.py", "data/**/*.csv", str(tmp_path / "elsewhere/cfg.yaml")])
    assert rels(got) == ["cfg.yaml", "data/a.csv", "data/b.csv", "data/deep/c.csv", "train.py"]
    # Relative to base when inside it.
    got = collect([str(tmp_path / "elsewhere/cfg.yaml")], base=tmp_path)
    assert rels(got) == ["elsewhere/cfg.yaml"]
    with pytest.raises(HomieError, match=r"no files match '\*\.nope'"):
        collect(["*.nope"])
    with pytest.raises(HomieError, match="file not found: missing.py"):
        collect(["missing.py"])
    with pytest.raises(HomieError):
        collect(["data"])  # a directory is not a file


def test_collect_sources_and_directory_merge(tmp_path, monkeypatch):
    mk(tmp_path, "proj/train.py", "proj/big.bin", "proj/sub/x.py")
    (tmp_path / "proj/.gitignore").write_text("*.bin\n")
    monkeypatch.chdir(tmp_path)
    # Named explicitly: sent even though ignored; named twice: sent once.
    got = collect(["proj/big.bin", "proj/train.py"], directory="proj")
    assert rels(got) == [".gitignore", "big.bin", "sub/x.py", "train.py"]


def test_collect_conflicts(tmp_path, monkeypatch):
    mk(tmp_path, "a/cfg.yaml", "b/cfg.yaml", "c/Readme", "c/README", "d/x")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(HomieError, match="cfg.yaml"):
        collect(["a/cfg.yaml", "b/cfg.yaml"], base=tmp_path / "a")
    with pytest.raises(HomieError, match="collide"):
        collect(directory=tmp_path / "c")
    (tmp_path / "bad\nname").write_text("x")
    with pytest.raises(HomieError, match="control character"):
        collect(["bad\nname"])


def test_summarize(tmp_path):
    mk(tmp_path, "a", "bb/cc")
    assert summarize(collect(directory=tmp_path).files) == (2, len("a") + len("bb/cc"))


# --------------------------------------------------------------------------
# jobdir.scan / jobdir.changed
# --------------------------------------------------------------------------


def test_changed_files(tmp_path):
    mk(tmp_path, "in.txt", "same.txt", "sub/keep.txt", "rewrite.txt")
    before = jobdir.scan(tmp_path)
    (tmp_path / "in.txt").write_text("modified, longer")
    mk(tmp_path, "out/model.pt", ".homie/stdout.log", "sub/.homie/x")
    # Replaced by rename with the same size and mtime: only the inode tells.
    st = (tmp_path / "rewrite.txt").stat()
    (tmp_path / "tmp").write_text("rewrite.tx_")
    os.utime(tmp_path / "tmp", ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(tmp_path / "tmp", tmp_path / "rewrite.txt")
    outside = tmp_path.parent / (tmp_path.name + "-outside")
    mk(outside, "secret")
    os.symlink(outside, tmp_path / "escape")
    os.symlink(outside / "secret", tmp_path / "secret-link")
    assert jobdir.changed(tmp_path, before) == ["in.txt", "out/model.pt", "rewrite.txt", "sub/.homie/x"]


def test_commit_after_swallowed_error_still_fails(tmp_path):
    cache = BlobCache(tmp_path, 100, fsync=False)
    w = cache.writer(sha(b"ab"), 2)
    with pytest.raises(ManifestError):
        w.write(b"abc")
    with pytest.raises(ManifestError, match="aborted"):
        w.commit()
    assert not cache.has(sha(b"ab"))


def test_hash_cache_survives_corrupt_db(tmp_path):
    db = tmp_path / "h.db"
    db.write_bytes(b"this is not a sqlite database" * 100)
    f = tmp_path / "f"
    f.write_bytes(b"x")
    age(f)
    with HashCache(db) as hc:
        assert hc.sha256_of(f) == (1, sha(b"x"))
        assert hc.sha256_of(f) == (1, sha(b"x"))
        assert hc.hashed == 1


def test_hash_cache_non_utf8_name(tmp_path):
    name = os.fsdecode(b"caf\xe9.bin")  # latin-1 name on a UTF-8 system
    f = tmp_path / name
    f.write_bytes(b"data")
    age(f)
    with HashCache(tmp_path / "h.db") as hc:
        assert hc.sha256_of(f) == hc.sha256_of(f) == (4, sha(b"data"))
        assert hc.hashed == 1
