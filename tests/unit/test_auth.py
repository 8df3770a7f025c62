"""Password files (mqttd.auth) and the ``mqttd passwd`` tool (mqttd.passwd)."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mqttd import auth, passwd
from mqttd.auth import PasswordFile, hash_password
from mqttd.errors import ConfigError

# Written by Debian's mosquitto_passwd 2.0.11 (alice: "correct horse", default $7$; bob:
# "battery staple" with -H sha512; "ünï": "pässwörd"). Fixed vectors from the reference tool.
MOSQUITTO_FILE = (
    "alice:$7$101$/61iwtFVYo1W6CRY$vBb1Ncl1yH8FX6ILn+93H1D+Fmh446OOy7sNIvZg3n/zb8VI7QL560xyhcBWX4x6"
    "c6h59HsHhr2r6nq/V7TFEQ==\n"
    "bob:$6$P7iWJl3bAlazawiK$xRURNVG+DG3WTI+j3NruUqd9kMaHYBfPKoflgM//ESdlWCtKXc6fpc9kcc/H8H4PlSxqLU"
    "K3NwbW9X7dadbFEw==\n"
    "ünï:$7$101$PUBGLZxQKhx25H8B$BfBADr7ONSo3aah5XN6SY2vucEATxTZfb9cT8WYX7e9WrLstFmf3uZThvxoH7Xusgz"
    "kWUqidIeJeEjNFhmRnBQ==\n"
)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def pbkdf2_line(user: str, password: bytes, salt: bytes, iterations: int) -> str:
    """A $7$ line computed here, independently of mqttd.auth."""
    digest = hashlib.pbkdf2_hmac("sha512", password, salt, iterations)
    return f"{user}:$7${iterations}${b64(salt)}${b64(digest)}"


def sha512_line(user: str, password: bytes, salt: bytes) -> str:
    """A $6$ line computed here, independently of mqttd.auth."""
    return f"{user}:$6${b64(salt)}${b64(hashlib.sha512(password + salt).digest())}"


# --- verification ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("user", "password"),
    [("alice", "correct horse"), ("bob", "battery staple"), ("ünï", "pässwörd")],
)
def test_mosquitto_passwd_vectors_verify(user: str, password: str) -> None:
    """Lines written by mosquitto_passwd ($7$ and $6$, non-ASCII names) verify."""
    pwfile = PasswordFile.parse(MOSQUITTO_FILE)
    assert pwfile.verify(user, password.encode("utf-8"))
    assert not pwfile.verify(user, password.encode("utf-8") + b"!")
    assert not pwfile.verify(user, b"")


@pytest.mark.parametrize("iterations", [1, 101, 1000])
@pytest.mark.parametrize("salt", [b"\x00" * 12, os.urandom(12), b"s", os.urandom(33)])
def test_pbkdf2_vector_computed_with_hashlib(iterations: int, salt: bytes) -> None:
    """$7$ entries with any iteration count and salt length verify; other passwords fail."""
    pwfile = PasswordFile.parse(pbkdf2_line("u", b"p\xc3\xa4ss", salt, iterations) + "\n")
    assert pwfile.verify("u", b"p\xc3\xa4ss")
    assert not pwfile.verify("u", b"pass")


@pytest.mark.parametrize("salt", [b"0123456789ab", os.urandom(16)])
def test_sha512_vector_computed_with_hashlib(salt: bytes) -> None:
    """$6$ entries are SHA-512(password || salt)."""
    pwfile = PasswordFile.parse(sha512_line("u", b"secret", salt))
    assert pwfile.verify("u", b"secret")
    assert not pwfile.verify("u", b"Secret")
    # The order matters: SHA-512(salt || password) must not verify.
    swapped = f"u:$6${b64(salt)}${b64(hashlib.sha512(salt + b'secret').digest())}"
    assert not PasswordFile.parse(swapped).verify("u", b"secret")


def test_unknown_user_and_missing_password_are_refused() -> None:
    """Unknown users, other users' passwords and an absent password are all refused."""
    pwfile = PasswordFile.parse(MOSQUITTO_FILE)
    assert not pwfile.verify("mallory", b"correct horse")
    assert not pwfile.verify("bob", b"correct horse")
    assert not pwfile.verify("alice", None)
    assert not pwfile.verify("ALICE", b"correct horse")


def test_unknown_user_costs_a_hash_and_constant_time_compare(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An unknown user still runs PBKDF2 with the file's iteration count and compare_digest."""
    pbkdf2_calls: list[int] = []
    compare_calls: list[int] = []
    real_pbkdf2 = hashlib.pbkdf2_hmac
    real_compare = auth.hmac.compare_digest

    def counting_pbkdf2(name: str, password: bytes, salt: bytes, rounds: int, **kw: int) -> bytes:
        pbkdf2_calls.append(rounds)
        return real_pbkdf2(name, password, salt, rounds, **kw)

    def counting_compare(a: bytes, b: bytes) -> bool:
        compare_calls.append(len(a))
        return real_compare(a, b)

    lines = [pbkdf2_line(f"u{i}", b"pw", os.urandom(12), 2000) for i in range(3)]
    pwfile = PasswordFile.parse("\n".join(lines))
    monkeypatch.setattr(auth.hashlib, "pbkdf2_hmac", counting_pbkdf2)
    monkeypatch.setattr(auth.hmac, "compare_digest", counting_compare)

    assert not pwfile.verify("nobody", b"pw")
    assert pbkdf2_calls == [2000]
    assert compare_calls == [64]
    assert not pwfile.verify("u1", None)
    assert pbkdf2_calls == [2000, 2000]
    assert pwfile.verify("u2", b"pw")
    assert compare_calls == [64, 64, 64]


def test_unknown_user_in_sha512_file_costs_a_sha512(monkeypatch: pytest.MonkeyPatch) -> None:
    """In a file of $6$ entries, an unknown user costs one SHA-512 like a known one, no PBKDF2."""
    calls: list[str] = []
    real_sha512 = hashlib.sha512

    def counting_sha512(data: bytes = b"") -> object:
        calls.append("sha512")
        return real_sha512(data)

    def no_pbkdf2(*args: object, **kwargs: object) -> bytes:
        raise AssertionError("PBKDF2 used for a $6$ file")

    pwfile = PasswordFile.parse(
        sha512_line("a", b"pw", b"salt1") + "\n" + sha512_line("b", b"x", b"s")
    )
    monkeypatch.setattr(auth.hashlib, "sha512", counting_sha512)
    monkeypatch.setattr(auth.hashlib, "pbkdf2_hmac", no_pbkdf2)
    assert not pwfile.verify("nobody", b"pw")
    assert calls == ["sha512"]
    assert pwfile.verify("a", b"pw")
    assert calls == ["sha512", "sha512"]


def test_contains_len_and_iter() -> None:
    """The file exposes its user names."""
    pwfile = PasswordFile.parse(MOSQUITTO_FILE)
    assert "alice" in pwfile
    assert "mallory" not in pwfile
    assert len(pwfile) == 3
    assert sorted(pwfile) == sorted(["alice", "bob", "ünï"])


# --- hash_password --------------------------------------------------------------------------


def test_hash_password_writes_mosquitto_default_format() -> None:
    """hash_password gives $7$101$<12-byte salt>$<64-byte PBKDF2-SHA512>, fresh salt each time."""
    encoded = hash_password("hunter2")
    match = re.fullmatch(r"\$7\$101\$([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+)", encoded)
    assert match is not None
    salt = base64.b64decode(match[1])
    assert len(salt) == 12
    expected = hashlib.pbkdf2_hmac("sha512", b"hunter2", salt, 101)
    assert base64.b64decode(match[2]) == expected
    assert hash_password("hunter2") != encoded


def test_hash_password_with_given_salt_and_iterations() -> None:
    """A given salt and iteration count are used as is."""
    encoded = hash_password("pw", iterations=7, salt=b"NaCl")
    digest = hashlib.pbkdf2_hmac("sha512", b"pw", b"NaCl", 7)
    assert encoded == f"$7$7${b64(b'NaCl')}${b64(digest)}"
    assert PasswordFile.parse(f"x:{encoded}").verify("x", b"pw")
    with pytest.raises(ValueError, match="iterations"):
        hash_password("pw", iterations=0)
    with pytest.raises(ValueError, match="salt"):
        hash_password("pw", salt=b"")


# --- parsing --------------------------------------------------------------------------------


def test_comments_blank_lines_crlf_and_blanks_are_accepted() -> None:
    """'#' comments, blank lines, CRLF endings and blanks around fields are ignored."""
    entry = pbkdf2_line("carol", b"pw", b"saltsaltsalt", 101)
    user, _, encoded = entry.partition(":")
    text = f"# users\r\n\r\n   \n  {user} :  {encoded}  \r\n#carol:plain\n"
    pwfile = PasswordFile.parse(text)
    assert len(pwfile) == 1
    assert pwfile.verify("carol", b"pw")


GOOD_HASH = pbkdf2_line("x", b"pw", b"saltsaltsalt", 101).partition(":")[2]


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("no colon here", "username:password-hash"),
        (f":{GOOD_HASH}", "empty user name"),
        ("dave:plaintext", "not hashed"),
        ("dave:", "not hashed"),
        ("dave:$5$abc$def", "unknown hash type"),
        ("dave:$7$101$c2FsdA==", r"\$7\$<iterations>"),
        ("dave:$6$c2FsdA==", r"\$6\$<salt>"),
        (f"dave:$7$abc${b64(b'salt')}${b64(bytes(64))}", "decimal"),
        (f"dave:$7$0${b64(b'salt')}${b64(bytes(64))}", "between 1 and"),
        (f"dave:$7$101$!!!${b64(bytes(64))}", "salt is not valid base64"),
        (f"dave:$7$101${b64(b'salt')}$####", "hash is not valid base64"),
        (f"dave:$7$101${b64(b'salt')}${b64(bytes(32))}", "64 bytes"),
        (f"dave:$6$${b64(bytes(64))}", "empty salt"),
        (f"dave:$6${b64(b'salt')}${b64(bytes(63))}", "64 bytes"),
        (f"dave:{GOOD_HASH}:extra", "base64"),
    ],
)
def test_malformed_line_names_the_line_number(line: str, reason: str) -> None:
    """Each malformed entry is a ConfigError naming the source, the line number and why."""
    text = f"# header\n{pbkdf2_line('ok', b'pw', b'saltsaltsalt', 101)}\n\n{line}\n"
    with pytest.raises(ConfigError, match=r"^users\.txt:4: ") as info:
        PasswordFile.parse(text, source="users.txt")
    assert re.search(reason, str(info.value))
    secret = line.partition(":")[2]
    if secret:
        assert secret not in str(info.value)  # never echo a password or hash


def test_duplicate_user_is_an_error() -> None:
    """A user listed twice is rejected at the second line (which password would win?)."""
    line = pbkdf2_line("eve", b"pw", b"saltsaltsalt", 101)
    with pytest.raises(ConfigError, match=r":2: user 'eve' is listed twice"):
        PasswordFile.parse(f"{line}\n{line}\n")


def test_load_reads_a_file_and_reports_unreadable_ones(tmp_path: Path) -> None:
    """load() parses a file; a missing or non-UTF-8 file is a ConfigError naming it."""
    path = tmp_path / "pw"
    path.write_text(MOSQUITTO_FILE, encoding="utf-8")
    pwfile = PasswordFile.load(path)
    assert pwfile.verify("alice", b"correct horse")
    assert pwfile.source == str(path)
    with pytest.raises(ConfigError, match=re.escape(str(tmp_path / "missing"))):
        PasswordFile.load(tmp_path / "missing")
    path.write_bytes(MOSQUITTO_FILE.encode() + b"x\xff:y\n")
    with pytest.raises(ConfigError, match=r"pw:4: .*UTF-8"):
        PasswordFile.load(path)


def test_pure_modules_do_not_import_trio() -> None:
    """mqttd.auth, mqttd.acl and mqttd.passwd stay free of trio."""
    code = "import sys, mqttd.auth, mqttd.acl, mqttd.passwd; print('trio' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "False"


# --- mqttd passwd ---------------------------------------------------------------------------


def run_passwd(argv: list[str], prompt: Callable[[str], str] | None = None) -> tuple[int, str]:
    """Run passwd.main and return (exit code, captured stderr)."""
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        if prompt is None:
            code = passwd.main(argv, prompt=refuse_prompt)
        else:
            code = passwd.main(argv, prompt=prompt)
    return code, err.getvalue()


def refuse_prompt(text: str) -> str:
    raise AssertionError(f"unexpected prompt {text!r}")


def answers(*values: str) -> Callable[[str], str]:
    """A fake getpass that returns the given answers in order and records the prompts."""
    queue: Iterator[str] = iter(values)

    def prompt(text: str) -> str:
        assert "assword" in text
        return next(queue)

    return prompt


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_passwd_create_batch(tmp_path: Path) -> None:
    """-c -b creates a 0600 file with one $7$ entry that verifies."""
    path = tmp_path / "pw"
    code, err = run_passwd(["-c", "-b", str(path), "alice", "s3cret"])
    assert (code, err) == (0, "")
    assert mode(path) == 0o600
    text = path.read_text()
    assert re.fullmatch(r"alice:\$7\$101\$[^$]+\$[^$]+\n", text)
    assert PasswordFile.load(path).verify("alice", b"s3cret")


def test_passwd_create_overwrites(tmp_path: Path) -> None:
    """-c replaces an existing file entirely."""
    path = tmp_path / "pw"
    path.write_text(MOSQUITTO_FILE)
    assert run_passwd(["-c", "-b", str(path), "zed", "pw"])[0] == 0
    pwfile = PasswordFile.load(path)
    assert list(pwfile) == ["zed"]


def test_passwd_batch_adds_and_updates_keeping_comments(tmp_path: Path) -> None:
    """-b adds a user or replaces its hash, and keeps comments, blank lines and other users."""
    path = tmp_path / "pw"
    path.write_text("# site users\n\n" + MOSQUITTO_FILE)
    path.chmod(0o644)
    assert run_passwd(["-b", str(path), "dave", "d-pw"])[0] == 0
    assert run_passwd(["-b", str(path), "alice", "new"])[0] == 0
    lines = path.read_text().splitlines()
    assert lines[:2] == ["# site users", ""]
    assert [line.partition(":")[0] for line in lines[2:]] == ["alice", "bob", "ünï", "dave"]
    pwfile = PasswordFile.load(path)
    assert pwfile.verify("alice", b"new")
    assert not pwfile.verify("alice", b"correct horse")
    assert pwfile.verify("bob", b"battery staple")
    assert pwfile.verify("dave", b"d-pw")
    assert mode(path) == 0o600


def test_passwd_prompts_twice(tmp_path: Path) -> None:
    """Without -b the password is read twice through the no-echo prompt."""
    path = tmp_path / "pw"
    code, _ = run_passwd(["-c", str(path), "alice"], prompt=answers("typed", "typed"))
    assert code == 0
    assert PasswordFile.load(path).verify("alice", b"typed")


def test_passwd_prompt_mismatch_writes_nothing(tmp_path: Path) -> None:
    """Two different answers are an error (exit 1) and no file is created."""
    path = tmp_path / "pw"
    code, err = run_passwd(["-c", str(path), "alice"], prompt=answers("one", "two"))
    assert code == 1
    assert "do not match" in err
    assert list(tmp_path.iterdir()) == []


def test_passwd_delete(tmp_path: Path) -> None:
    """-D removes the user; deleting an absent user is exit 1 and changes nothing."""
    path = tmp_path / "pw"
    path.write_text(MOSQUITTO_FILE)
    assert run_passwd(["-D", str(path), "bob"])[0] == 0
    assert sorted(PasswordFile.load(path)) == sorted(["alice", "ünï"])
    before = path.read_bytes()
    code, err = run_passwd(["-D", str(path), "bob"])
    assert code == 1
    assert "not found" in err
    assert path.read_bytes() == before


def test_passwd_upgrade_plain_text(tmp_path: Path) -> None:
    """-U hashes plain-text lines, keeps hashed lines and comments, password ends at ':'."""
    path = tmp_path / "pw"
    hashed = pbkdf2_line("kept", b"k", b"saltsaltsalt", 101)
    path.write_text(f"# legacy\nann:pw1\n\nben : pw2 \ncat:pw3:extra\n{hashed}\n")
    code, err = run_passwd(["-U", str(path)])
    assert (code, err) == (0, "")
    text = path.read_text()
    assert hashed in text
    assert text.startswith("# legacy\n")
    assert "pw1" not in text
    pwfile = PasswordFile.load(path)
    assert pwfile.verify("ann", b"pw1")
    assert pwfile.verify("ben", b"pw2")
    assert pwfile.verify("cat", b"pw3")  # as mosquitto_passwd -U: the password ends at ':'
    assert pwfile.verify("kept", b"k")
    assert mode(path) == 0o600


def test_passwd_upgrade_corrupt_file_is_untouched(tmp_path: Path) -> None:
    """-U on a line without ':' fails with its line number and leaves the file as it was."""
    path = tmp_path / "pw"
    path.write_text("ann:pw1\nthis is not an entry\n")
    before = path.read_bytes()
    code, err = run_passwd(["-U", str(path)])
    assert code == 1
    assert "line 2" in err
    assert path.read_bytes() == before


def test_passwd_sha512_option(tmp_path: Path) -> None:
    """-H sha512 writes the legacy $6$ form, which verifies."""
    path = tmp_path / "pw"
    assert run_passwd(["-H", "sha512", "-c", "-b", str(path), "old", "pw"])[0] == 0
    assert path.read_text().startswith("old:$6$")
    assert PasswordFile.load(path).verify("old", b"pw")


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["-c", "-D", "FILE", "alice"],
        ["-b", "FILE", "alice"],
        ["FILE"],
        ["-U", "FILE", "alice"],
        ["-U", "-c", "FILE"],
        ["-H", "md5", "FILE", "alice"],
        ["--nope", "FILE", "alice"],
    ],
)
def test_passwd_usage_errors_exit_2(tmp_path: Path, argv: list[str]) -> None:
    """Bad command lines exit with status 2 and a usage message, touching no file."""
    path = tmp_path / "pw"
    code, err = run_passwd([str(path) if a == "FILE" else a for a in argv])
    assert code == 2
    assert "usage: mqttd passwd" in err
    assert not path.exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-b", "FILE", "alice", "pw"], "Unable to open"),
        (["-c", "-b", "FILE", "a:b", "pw"], "':'"),
        (["-c", "-b", "FILE", "", "pw"], "empty"),
        (["-c", "-b", "FILE", "alice", ""], "Empty password"),
    ],
)
def test_passwd_errors_exit_1(tmp_path: Path, argv: list[str], message: str) -> None:
    """Missing file without -c, bad user names and empty passwords exit 1 with a message."""
    path = tmp_path / "pw"
    code, err = run_passwd([str(path) if a == "FILE" else a for a in argv])
    assert code == 1
    assert message in err
    assert not path.exists()


def test_passwd_failed_write_leaves_old_file_and_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the final rename fails, the old file is intact and the temporary file is removed."""
    path = tmp_path / "pw"
    path.write_text(MOSQUITTO_FILE)
    before = path.read_bytes()

    def failing_replace(src: str, dst: object) -> None:
        assert Path(src).parent == tmp_path  # the temp file lives next to the target
        assert Path(src).read_bytes().startswith(b"alice:")  # fully written before the rename
        raise OSError(28, "No space left on device", str(dst))

    monkeypatch.setattr(passwd.os, "replace", failing_replace)
    code, err = run_passwd(["-b", str(path), "dave", "pw"])
    assert code == 1
    assert "No space left" in err
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["pw"]


def test_passwd_write_error_midway_leaves_no_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure while syncing the temporary file leaves neither a partial file nor a temp file."""
    path = tmp_path / "pw"

    def failing_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(passwd.os, "fsync", failing_fsync)
    code, _ = run_passwd(["-c", "-b", str(path), "alice", "pw"])
    assert code == 1
    assert list(tmp_path.iterdir()) == []
