import os
import stat
import subprocess
import sys

import pytest

from homie.errors import KeyFileError
from homie.keys import (
    KEY_BYTES,
    _hkdf,
    derive,
    fingerprint,
    format_key,
    generate_key,
    group_tag,
    load_key,
    parse_key,
    save_key,
)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_generate_key_is_random_and_sized():
    a, b = generate_key(), generate_key()
    assert len(a) == KEY_BYTES and a != b


def test_format_is_grouped_base32_without_padding():
    text = format_key(bytes(range(32)))
    assert "=" not in text and text == text.upper()
    blocks = text.split("-")
    assert all(len(b) == 4 for b in blocks)
    assert len("".join(blocks)) == 56  # 52 for the key, 4 for its checksum


def test_a_mistyped_key_is_not_a_valid_key():
    text = format_key(generate_key())
    i = 10 if text[10] != "-" else 11
    typo = text[:i] + ("A" if text[i] != "A" else "B") + text[i + 1:]
    with pytest.raises(KeyFileError, match="not a valid key"):
        parse_key(typo)


def test_a_key_without_checksum_is_still_accepted():
    key = generate_key()
    assert parse_key(format_key(key).replace("-", "")[:52]) == key


@pytest.mark.parametrize("key", [bytes(32), b"\xff" * 32, bytes(range(32))] + [os.urandom(32) for _ in range(20)])
def test_round_trip(key):
    assert parse_key(format_key(key)) == key


def test_parse_tolerates_case_spaces_and_dashes():
    key = generate_key()
    text = format_key(key)
    assert parse_key(text.lower()) == key
    assert parse_key(" " + text.replace("-", " ") + "\n") == key
    assert parse_key(text.replace("-", "")) == key
    assert parse_key("-".join(text.replace("-", ""))) == key


def test_parse_rejects_bad_characters():
    text = format_key(generate_key())
    with pytest.raises(KeyFileError, match=r"malformed key: bad character.*'0'.*'1'"):
        parse_key("01" + text[2:])


@pytest.mark.parametrize("cut", [1, 3, 10])
def test_parse_rejects_wrong_length(cut):
    text = format_key(generate_key()).replace("-", "")
    with pytest.raises(KeyFileError, match=r"malformed key: .*expected 56"):
        parse_key(text[:-cut])
    with pytest.raises(KeyFileError, match=r"malformed key: .*expected 56"):
        parse_key(text + "A" * cut)
    with pytest.raises(KeyFileError, match="malformed key"):
        parse_key("")


def test_hkdf_matches_rfc5869_test_case_1():
    okm = _hkdf(
        bytes.fromhex("0b" * 22),
        bytes.fromhex("000102030405060708090a0b0c"),
        bytes.fromhex("f0f1f2f3f4f5f6f7f8f9"),
        42,
    )
    assert okm.hex() == (
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
    )


@pytest.mark.parametrize("label,length",
                         [("group-tag", 8), ("heartbeat-hmac", 32), ("ca-key", 32), ("ca-serial", 20), ("x", 100)])
def test_derive_matches_cryptography_hkdf(label, length):
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    key = generate_key()
    expected = HKDF(hashes.SHA256(), length, b"homie/v1", label.encode()).derive(key)
    assert derive(key, label, length) == expected


def test_labels_give_independent_subkeys():
    key = generate_key()
    subkeys = {derive(key, label) for label in ("group-tag", "heartbeat-hmac", "ca-key", "ca-serial")}
    assert len(subkeys) == 4
    assert group_tag(key) == derive(key, "group-tag", 8)


def test_derive_rejects_non_keys():
    with pytest.raises(ValueError):
        derive(b"short", "group-tag")
    with pytest.raises(ValueError):
        derive(generate_key(), "x", 0)


def test_fingerprint_is_short_stable_and_not_the_key():
    key = generate_key()
    fp = fingerprint(key)
    assert fp == fingerprint(key) and len(fp) == 8
    int(fp, 16)
    assert fp not in key.hex() and fp not in format_key(key).lower()
    assert fingerprint(generate_key()) != fp


def test_save_and_load(tmp_path):
    path = tmp_path / "a" / "b" / "key"
    key = generate_key()
    save_key(path, key)
    assert load_key(path) == key
    assert mode(path) == 0o600
    assert mode(tmp_path / "a") == 0o700 and mode(tmp_path / "a" / "b") == 0o700
    assert path.read_text().strip() == format_key(key)
    assert [p.name for p in path.parent.iterdir()] == ["key"]  # no temp files left


def test_save_does_not_chmod_existing_parent(tmp_path):
    os.chmod(tmp_path, 0o755)
    save_key(tmp_path / "key", generate_key())
    assert mode(tmp_path) == 0o755


def test_save_is_0600_even_with_a_lax_umask(tmp_path):
    old = os.umask(0)
    try:
        save_key(tmp_path / "d" / "key", generate_key())
    finally:
        os.umask(old)
    assert mode(tmp_path / "d" / "key") == 0o600
    assert mode(tmp_path / "d") == 0o700


def test_save_refuses_to_replace_without_force(tmp_path):
    path = tmp_path / "key"
    first, second = generate_key(), generate_key()
    save_key(path, first)
    with pytest.raises(KeyFileError, match=f"a key already exists at {path}; use --force to replace it"):
        save_key(path, second)
    assert load_key(path) == first
    save_key(path, second, force=True)
    assert load_key(path) == second
    assert mode(path) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["key"]


def test_load_missing(tmp_path):
    path = tmp_path / "key"
    with pytest.raises(KeyFileError, match=r"no group key at .*key: run `homie init` or `homie join KEY`"):
        load_key(path)


@pytest.mark.parametrize("content", [b"not a key\n", b"\xff\xfe garbage", b""])
def test_load_malformed_names_the_file(tmp_path, content):
    path = tmp_path / "key"
    path.write_bytes(content)
    with pytest.raises(KeyFileError, match=f"malformed group key in {path}") as e:
        load_key(path)
    assert e.value.exit_code == KeyFileError.exit_code


def test_load_directory_is_a_clear_error(tmp_path):
    with pytest.raises(KeyFileError, match="group key"):
        load_key(tmp_path)


def test_load_tightens_lax_permissions(tmp_path):
    path = tmp_path / "key"
    key = generate_key()
    path.write_text(format_key(key).lower() + "\n")
    os.chmod(path, 0o644)
    assert load_key(path) == key
    assert mode(path) == 0o600


def test_load_does_not_follow_a_symlink(tmp_path):
    # The finding: with `key` a symlink to another file, `homie key` chmodded the target.
    target = tmp_path / "elsewhere"
    key = generate_key()
    target.write_text(format_key(key) + "\n")
    os.chmod(target, 0o644)
    link = tmp_path / "key"
    link.symlink_to(target)
    with pytest.raises(KeyFileError, match=f"the group key at {link} is a symlink") as e:
        load_key(link)
    assert e.value.exit_code == 2
    assert mode(target) == 0o644, "the symlink's target was chmodded"


def test_load_does_not_chmod_a_hard_link_or_another_users_file(tmp_path):
    key = generate_key()
    other = tmp_path / "other"
    other.write_text(format_key(key) + "\n")
    os.chmod(other, 0o644)
    os.link(other, tmp_path / "key")
    assert load_key(tmp_path / "key") == key  # readable: loading it is the user's call
    assert mode(other) == 0o644, "chmod reached the file's other name"
    if os.geteuid() == 0:
        theirs = tmp_path / "theirs"
        theirs.write_text(format_key(key) + "\n")
        os.chmod(theirs, 0o644)
        os.chown(theirs, 65534, 65534)
        assert load_key(theirs) == key
        assert mode(theirs) == 0o644


def test_save_with_force_replaces_a_symlink_not_its_target(tmp_path):
    target = tmp_path / "elsewhere"
    target.write_text("precious\n")
    link = tmp_path / "key"
    link.symlink_to(target)
    with pytest.raises(KeyFileError, match="already exists"):
        save_key(link, generate_key())
    key = generate_key()
    save_key(link, key, force=True)
    assert not link.is_symlink() and load_key(link) == key
    assert target.read_text() == "precious\n"


def test_import_stays_light():
    # The CLI imports homie.keys on every start; cryptography must not come with it.
    code = "import sys, homie.keys, homie.discovery.heartbeat, homie.wire.trust; print('cryptography' in sys.modules)"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "False"
