"""Password files in Mosquitto 2.0's format, read unchanged.

Theory of operation: a password file is a list of ``username:hash`` lines. Two hash forms exist,
both written by ``mosquitto_passwd`` (and ``$7$`` by ``mqttd passwd``)::

    user:$7$<iterations>$<base64 salt>$<base64 PBKDF2-HMAC-SHA512(password, salt), 64 bytes>
    user:$6$<base64 salt>$<base64 SHA-512(password || salt)>

``mosquitto_passwd`` uses a 12-byte random salt and 101 PBKDF2 iterations. As in Mosquitto,
lines whose first character is ``#`` are comments and blank lines are skipped; blanks around the
user name and the hash are ignored. Unlike Mosquitto, which logs a bad entry and silently drops
that user, any other malformed line is a ``ConfigError`` naming the file and line number, so a
typo cannot quietly lock a user out (or leave an old password working after a reload).

This module is pure: no trio, no logging. ``PasswordFile.verify`` is CPU-bound by design
(PBKDF2), so the broker runs it in a worker thread (``trio.to_thread.run_sync``). The comparison
is constant-time (``hmac.compare_digest``), and an unknown user costs the same hash computation as
a known one, so response time does not reveal which user names exist.
"""

from __future__ import annotations

import base64
import binascii
import collections
import hashlib
import hmac
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from mqttd.errors import ConfigError

__all__ = [
    "DEFAULT_PBKDF2_ITERATIONS",
    "SALT_BYTES",
    "PasswordFile",
    "hash_password",
    "is_blank_or_comment",
    "parse_password_hash",
]

#: ``mosquitto_passwd``'s default PBKDF2 iteration count (``$7$101$...``).
DEFAULT_PBKDF2_ITERATIONS = 101
#: Salt length ``mosquitto_passwd`` generates (12 bytes, 16 base64 characters).
SALT_BYTES = 12
#: Both formats store a full SHA-512-sized digest.
_DIGEST_BYTES = 64
#: Upper bound on PBKDF2 iterations accepted from a file: a corrupt or hostile value must not make
#: every CONNECT burn minutes of CPU. 10 million is far above any sane setting.
_MAX_ITERATIONS = 10_000_000


@dataclass(frozen=True, slots=True, repr=False)
class _Sha512Hash:
    """``$6$``: one round of SHA-512 over password followed by salt (Mosquitto 1.x's format)."""

    salt: bytes
    digest: bytes

    def compute(self, password: bytes) -> bytes:
        return hashlib.sha512(password + self.salt).digest()


@dataclass(frozen=True, slots=True, repr=False)
class _Pbkdf2Hash:
    """``$7$``: PBKDF2-HMAC-SHA512 with a 64-byte derived key (Mosquitto 2.0's default)."""

    iterations: int
    salt: bytes
    digest: bytes

    def compute(self, password: bytes) -> bytes:
        return hashlib.pbkdf2_hmac(
            "sha512", password, self.salt, self.iterations, dklen=_DIGEST_BYTES
        )


_Hash = _Sha512Hash | _Pbkdf2Hash


def _b64decode(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error, ValueError):
        raise ValueError(f"{what} is not valid base64") from None


def parse_password_hash(encoded: str) -> _Sha512Hash | _Pbkdf2Hash:
    """Decode the hash part of a password line (``$6$...`` or ``$7$...``).

    Args:
        encoded: the text after ``user:``, blanks already stripped.

    Returns:
        An opaque hash object with ``compute(password) -> bytes`` and ``digest``.

    Raises:
        ValueError: with a short reason, when ``encoded`` is not a valid hash of either form.
    """
    parts = encoded.split("$")
    # A leading "$" yields an empty first part: ["", "7", iterations, salt, hash].
    if len(parts) < 2 or parts[0] != "":
        raise ValueError("password is not hashed (expected $6$ or $7$; run 'mqttd passwd -U')")
    kind = parts[1]
    if kind == "6":
        if len(parts) != 4:
            raise ValueError("$6$ hash must be $6$<salt>$<hash>")
        salt = _b64decode(parts[2], "salt")
        digest = _b64decode(parts[3], "hash")
        if not salt:
            raise ValueError("empty salt")
        if len(digest) != _DIGEST_BYTES:
            raise ValueError(f"hash must be {_DIGEST_BYTES} bytes, not {len(digest)}")
        return _Sha512Hash(salt=salt, digest=digest)
    if kind == "7":
        if len(parts) != 5:
            raise ValueError("$7$ hash must be $7$<iterations>$<salt>$<hash>")
        if not parts[2].isascii() or not parts[2].isdigit():
            raise ValueError("iteration count is not a decimal number")
        iterations = int(parts[2])
        if not 1 <= iterations <= _MAX_ITERATIONS:
            raise ValueError(f"iteration count must be between 1 and {_MAX_ITERATIONS}")
        salt = _b64decode(parts[3], "salt")
        digest = _b64decode(parts[4], "hash")
        if not salt:
            raise ValueError("empty salt")
        if len(digest) != _DIGEST_BYTES:
            raise ValueError(f"hash must be {_DIGEST_BYTES} bytes, not {len(digest)}")
        return _Pbkdf2Hash(iterations=iterations, salt=salt, digest=digest)
    raise ValueError(f"unknown hash type ${kind}$ (expected $6$ or $7$)")


def hash_password(
    password: str,
    *,
    iterations: int = DEFAULT_PBKDF2_ITERATIONS,
    salt: bytes | None = None,
) -> str:
    """Hash ``password`` the way ``mosquitto_passwd`` does by default.

    Args:
        password: the clear-text password (encoded as UTF-8, as MQTT clients send it).
        iterations: PBKDF2 iteration count (Mosquitto's default is 101).
        salt: the salt; a fresh 12-byte random salt when ``None``.

    Returns:
        ``$7$<iterations>$<base64 salt>$<base64 hash>``, the text after ``user:``.

    Raises:
        ValueError: ``iterations`` out of range or an empty ``salt``.
    """
    if not 1 <= iterations <= _MAX_ITERATIONS:
        raise ValueError(f"iterations must be between 1 and {_MAX_ITERATIONS}")
    if salt is None:
        salt = os.urandom(SALT_BYTES)
    if not salt:
        raise ValueError("salt must not be empty")
    digest = hashlib.pbkdf2_hmac(
        "sha512", password.encode("utf-8"), salt, iterations, dklen=_DIGEST_BYTES
    )
    salt_b64 = base64.b64encode(salt).decode("ascii")
    digest_b64 = base64.b64encode(digest).decode("ascii")
    return f"$7${iterations}${salt_b64}${digest_b64}"


def is_blank_or_comment(line: str) -> bool:
    """Whether a password-file line carries no entry (Mosquitto: ``#`` in column 1, or blank)."""
    return line.startswith("#") or not line.strip()


class PasswordFile:
    """The users and password hashes of one password file.

    Build it with ``PasswordFile.load(path)`` or ``PasswordFile.parse(text)``; it is immutable
    afterwards, so a reload builds a new object and swaps the reference.
    """

    __slots__ = ("_dummy", "_entries", "source")

    def __init__(self, entries: Mapping[str, _Hash], *, source: str = "<string>") -> None:
        self._entries: dict[str, _Hash] = dict(entries)
        self.source = source
        # Unknown users are checked against a throw-away hash of the kind (and iteration count)
        # most users have, so that they cost the same time as a real check.
        kinds = collections.Counter(
            h.iterations if isinstance(h, _Pbkdf2Hash) else None for h in self._entries.values()
        )
        kind = kinds.most_common(1)[0][0] if kinds else DEFAULT_PBKDF2_ITERATIONS
        self._dummy: _Hash
        if kind is None:
            self._dummy = _Sha512Hash(salt=os.urandom(SALT_BYTES), digest=os.urandom(_DIGEST_BYTES))
        else:
            self._dummy = _Pbkdf2Hash(
                iterations=kind, salt=os.urandom(SALT_BYTES), digest=os.urandom(_DIGEST_BYTES)
            )

    @classmethod
    def load(cls, path: Path) -> PasswordFile:
        """Read and parse a password file.

        Raises:
            ConfigError: the file cannot be read, is not UTF-8, or has a malformed line (the
                message names the file and the line number).
        """
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read password file: {exc.strerror}") from exc
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = data.count(b"\n", 0, exc.start) + 1
            raise ConfigError(f"{path}:{line}: password file is not valid UTF-8") from None
        return cls.parse(text, source=str(path))

    @classmethod
    def parse(cls, text: str, *, source: str = "<string>") -> PasswordFile:
        """Parse the text of a password file.

        Args:
            text: the whole file.
            source: the file name used in error messages.

        Raises:
            ConfigError: ``"<source>:<line>: <reason>"`` for the first malformed line: no ``:``,
                an empty user name, a plain-text or corrupt hash, or a user listed twice.
        """
        entries: dict[str, _Hash] = {}
        for number, raw in enumerate(text.split("\n"), start=1):
            line = raw.rstrip("\r")
            if is_blank_or_comment(line):
                continue
            username, sep, encoded = line.partition(":")
            username = username.strip()
            encoded = encoded.strip()
            if not sep:
                raise ConfigError(f"{source}:{number}: expected 'username:password-hash'")
            if not username:
                raise ConfigError(f"{source}:{number}: empty user name")
            if username in entries:
                raise ConfigError(f"{source}:{number}: user {username!r} is listed twice")
            try:
                entries[username] = parse_password_hash(encoded)
            except ValueError as exc:
                raise ConfigError(f"{source}:{number}: user {username!r}: {exc}") from None
        return cls(entries, source=source)

    def verify(self, username: str, password: bytes | None) -> bool:
        """Check a CONNECT's credentials. CPU-bound: call it from a worker thread.

        Args:
            username: the CONNECT user name.
            password: the CONNECT password, or ``None`` when the password flag was not set
                (always refused, as in Mosquitto, when the user has a password).

        Returns:
            ``True`` only if the user exists and the password matches. Unknown users and missing
            passwords still pay for one hash computation, then get ``False``.
        """
        stored = self._entries.get(username)
        candidate = b"" if password is None else password
        if stored is None:
            hmac.compare_digest(self._dummy.compute(candidate), self._dummy.digest)
            return False
        matches = hmac.compare_digest(stored.compute(candidate), stored.digest)
        return matches and password is not None

    def __contains__(self, username: object) -> bool:
        return username in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __repr__(self) -> str:
        return f"PasswordFile(source={self.source!r}, users={len(self._entries)})"
