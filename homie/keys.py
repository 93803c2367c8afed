"""The group key: generation, human-typable text form, storage, and sub-key derivation.

One 32-byte random key is the whole trust model (design notes, section 2). Every
use gets its own HKDF-SHA256 sub-key, so a leak of one (say a heartbeat MAC key
in a core dump) does not hand over the others.

Only the standard library is imported here: the CLI imports this module on every
start, and `cryptography` costs tens of milliseconds to import.

Never log a key or a derived secret; log `fingerprint(key)` instead.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import hmac
import os
import secrets
import stat
from pathlib import Path

from homie.errors import KeyFileError

KEY_BYTES = 32
GROUP_TAG_BYTES = 8
_SALT = b"homie/v1"
_B32_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")
# 32 bytes -> 52 base32 characters once the "====" padding is dropped.
_KEY_CHARS = -(-KEY_BYTES * 8 // 5)
# Then 4 check characters (20 bits of SHA-256): a mistyped key is refused
# instead of silently making a different group.
_CHECK_CHARS = 4
_GROUP = 4


def generate_key() -> bytes:
    return secrets.token_bytes(KEY_BYTES)


def _checksum(key: bytes) -> str:
    return base64.b32encode(hashlib.sha256(b"homie-key-check" + key).digest()).decode("ascii")[:_CHECK_CHARS]


def format_key(key: bytes) -> str:
    """Base32 plus a checksum, no padding, dash-separated blocks of 4: easy to read out and type."""
    _check_key(key)
    text = base64.b32encode(key).decode("ascii").rstrip("=") + _checksum(key)
    return "-".join(text[i : i + _GROUP] for i in range(0, len(text), _GROUP))


def parse_key(text: str) -> bytes:
    """Inverse of format_key; ignores case, whitespace and dashes. A key written
    before checksums existed (52 characters) is still accepted, unchecked."""
    cleaned = "".join(text.split()).replace("-", "").upper()
    bad = sorted(set(cleaned) - _B32_ALPHABET)
    if bad:
        shown = ", ".join(repr(c) for c in bad)
        raise KeyFileError(f"malformed key: bad character(s) {shown} (a key uses only A-Z and 2-7)")
    if len(cleaned) not in (_KEY_CHARS, _KEY_CHARS + _CHECK_CHARS):
        raise KeyFileError(
            f"malformed key: {len(cleaned)} characters, expected {_KEY_CHARS + _CHECK_CHARS}"
            " (ignoring dashes and spaces)"
        )
    body, check = cleaned[:_KEY_CHARS], cleaned[_KEY_CHARS:]
    padded = body + "=" * (-len(body) % 8)
    key = base64.b32decode(padded)
    if check and check != _checksum(key):
        raise KeyFileError("not a valid key: its checksum does not match (a character mistyped?)")
    return key


def _hkdf(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    """HKDF-SHA256 (RFC 5869), so deriving the group tag needs no `cryptography`."""
    if not 0 < length <= 255 * hashlib.sha256().digest_size:
        raise ValueError(f"HKDF length out of range: {length}")
    prk = hmac.digest(salt, ikm, "sha256")
    out = bytearray()
    block = b""
    counter = 1
    while len(out) < length:
        block = hmac.digest(prk, block + info + bytes([counter]), "sha256")
        out += block
        counter += 1
    return bytes(out[:length])


def derive(key: bytes, label: str, length: int = 32) -> bytes:
    """The sub-key for one use: "group-tag", "heartbeat-hmac", "ca-key", "ca-serial"."""
    _check_key(key)
    return _hkdf(key, _SALT, label.encode(), length)


def group_tag(key: bytes) -> bytes:
    """Public 8-byte group identifier carried in heartbeats; not secret, not the key."""
    return derive(key, "group-tag", GROUP_TAG_BYTES)


def fingerprint(key: bytes) -> str:
    """Short, non-secret id for display and logs (hash of the already-public tag)."""
    return hashlib.sha256(group_tag(key)).hexdigest()[:8]


def save_key(path: str | os.PathLike[str], key: bytes, force: bool = False) -> None:
    """Write the key atomically with mode 0600; refuse to replace one unless force.

    Every failure is a KeyFileError naming the path: a key path that is a
    directory, or a home nobody may write in, is the user's to fix, not a bug."""
    _check_key(key)
    path = Path(path)
    try:
        _write_key(path, key, force)
    except OSError as e:
        raise KeyFileError(f"cannot write the group key at {path}: {e.strerror or e}") from None


def _write_key(path: Path, key: bytes, force: bool) -> None:
    _make_private_dirs(path.parent)
    if not force and path.exists():
        raise KeyFileError(f"a key already exists at {path}; use --force to replace it")

    # A reader must never see a half-written or briefly world-readable key, hence
    # a private temp file in the same directory and a rename over the target.
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            os.write(fd, (format_key(key) + "\n").encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
        if force:
            os.replace(tmp, path)
        else:
            _publish_no_clobber(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def load_key(path: str | os.PathLike[str]) -> bytes:
    path = Path(path)
    try:
        # O_NONBLOCK: a FIFO planted at the key path must not hang the CLI.
        # O_NOFOLLOW: a symlink must not make us read, or chmod, another file.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise KeyFileError(f"no group key at {path}: run `homie init` or `homie join KEY`") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise KeyFileError(f"the group key at {path} is a symlink, which homie does not follow:"
                               " put the key file itself there") from None
        raise KeyFileError(f"cannot read the group key at {path}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(f"the group key at {path} is not a regular file")
        if st.st_mode & 0o077 and st.st_uid == os.geteuid() and st.st_nlink == 1:
            # Tighten rather than refuse: a key copied in by hand often lands 0644,
            # and refusing would only teach people to chmod blindly. Only our own
            # file with no other name: root must not chmod a hard link's other half.
            try:
                os.fchmod(fd, 0o600)
            except OSError:
                pass
        with os.fdopen(fd, "rb", closefd=False) as f:
            raw = f.read(4096)
    except OSError as e:
        raise KeyFileError(f"cannot read the group key at {path}: {e.strerror}") from None
    finally:
        os.close(fd)
    try:
        return parse_key(raw.decode("ascii"))
    except UnicodeDecodeError:
        raise KeyFileError(f"malformed group key in {path}: not text") from None
    except KeyFileError as e:
        raise KeyFileError(f"malformed group key in {path}: {str(e).removeprefix('malformed key: ')}") from None


def _check_key(key: bytes) -> None:
    if not isinstance(key, (bytes, bytearray)) or len(key) != KEY_BYTES:
        raise ValueError(f"a group key is {KEY_BYTES} bytes")


def _make_private_dirs(d: Path) -> None:
    # Only directories we create get 0700; an existing ~ or /tmp is not ours to chmod.
    missing = []
    while not d.exists():
        missing.append(d)
        d = d.parent
    for m in reversed(missing):
        try:
            m.mkdir(mode=0o700)
        except FileExistsError:
            pass
        else:
            os.chmod(m, 0o700)  # mkdir's mode is filtered by the umask


def _publish_no_clobber(tmp: Path, path: Path) -> None:
    # link() fails if the target exists, closing the race between two concurrent
    # `homie init`s that both passed the exists() check.
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise KeyFileError(f"a key already exists at {path}; use --force to replace it") from None
    except OSError:
        # Filesystems without hard links: fall back to the checked rename.
        os.replace(tmp, path)
        return
    tmp.unlink()


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return  # e.g. Windows cannot open directories; the rename is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
