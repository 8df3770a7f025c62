"""``mqttd passwd``: manage a password file, like Mosquitto's ``mosquitto_passwd``.

Usage (the same flags as ``mosquitto_passwd`` 2.0)::

    mqttd passwd [-H sha512-pbkdf2|sha512] [-c | -D] passwordfile username
    mqttd passwd [-H sha512-pbkdf2|sha512] [-c] -b passwordfile username password
    mqttd passwd -U passwordfile

``-c`` creates the file (overwriting it), ``-b`` takes the password from the command line
(batch mode), ``-D`` deletes the user, ``-U`` hashes every plain-text ``user:password`` line;
otherwise the password is asked for twice, without echo. New hashes are ``$7$`` (PBKDF2-SHA512,
101 iterations, 12-byte salt), as ``mosquitto_passwd`` writes by default; ``-H sha512`` writes
the legacy ``$6$`` form for Mosquitto 1.x.

Differences from ``mosquitto_passwd``, all on the safe side: comment and blank lines are kept
(``mosquitto_passwd`` drops or rejects them); ``-U`` leaves lines that already hold a valid hash
alone instead of hashing the hash; empty user names and empty passwords are refused; the file
is replaced atomically (written to a temporary file in the same directory, flushed, then renamed
over the old one), so a crash or error never leaves a half-written file, and it is always
created with mode 0600 since it holds password hashes.
As in ``mosquitto_passwd -U``, a plain-text password ends at the next ``:``.

Exit status: 0 on success, 1 on an error (message on stderr), 2 on a usage error.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import getpass as getpass_module
import hashlib
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from mqttd.auth import SALT_BYTES, hash_password, is_blank_or_comment, parse_password_hash

__all__ = ["main"]

#: Longest user name / password MQTT can carry (2-byte length prefix).
_MAX_FIELD_BYTES = 65_535


class _PasswdError(Exception):
    """An error reported to the user with exit status 1."""


class _UsageError(Exception):
    """A command-line mistake: exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _UsageError(message)


def _build_parser() -> _Parser:
    parser = _Parser(
        prog="mqttd passwd",
        description="Manage an mqttd / Mosquitto password file.",
        add_help=True,
    )
    parser.add_argument("-c", dest="create", action="store_true", help="create (overwrite) file")
    parser.add_argument("-D", dest="delete", action="store_true", help="delete the user")
    parser.add_argument(
        "-b", dest="batch", action="store_true", help="take the password from the command line"
    )
    parser.add_argument(
        "-U", dest="upgrade", action="store_true", help="hash a plain-text password file"
    )
    parser.add_argument(
        "-H",
        dest="hash_type",
        choices=("sha512-pbkdf2", "sha512"),
        default="sha512-pbkdf2",
        help="hash to write (default sha512-pbkdf2, the $7$ format)",
    )
    parser.add_argument("args", nargs="*", metavar="passwordfile [username [password]]")
    return parser


def _hash(password: str, hash_type: str) -> str:
    if hash_type == "sha512":
        salt = os.urandom(SALT_BYTES)
        digest = hashlib.sha512(password.encode("utf-8") + salt).digest()
        return f"$6${base64.b64encode(salt).decode('ascii')}${base64.b64encode(digest).decode()}"
    return hash_password(password)


def _check_username(username: str) -> None:
    if not username:
        raise _PasswdError("Error: Username must not be empty.")
    if ":" in username:
        raise _PasswdError("Error: Username must not contain the ':' character.")
    if any(ch in username for ch in "\r\n\x00"):
        raise _PasswdError("Error: Username must not contain newlines or NUL characters.")
    if username != username.strip():
        raise _PasswdError("Error: Username must not start or end with blanks.")
    if len(username.encode("utf-8", "surrogatepass")) > _MAX_FIELD_BYTES:
        raise _PasswdError("Error: Username is longer than 65535 bytes.")


def _check_password(password: str) -> None:
    if not password:
        raise _PasswdError("Error: Empty password.")
    if len(password.encode("utf-8", "surrogatepass")) > _MAX_FIELD_BYTES:
        raise _PasswdError("Error: Password is longer than 65535 bytes.")
    try:
        password.encode("utf-8")
    except UnicodeEncodeError:
        raise _PasswdError("Error: Password is not valid UTF-8.") from None


def _read_lines(path: Path) -> list[str]:
    """The file's lines without line endings; the entry lines must each contain a ``:``."""
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise _PasswdError(f"Error: Unable to open password file {path}: no such file.") from None
    except OSError as exc:
        raise _PasswdError(f"Error: Unable to open password file {path}: {exc.strerror}.") from exc
    except UnicodeDecodeError:
        raise _PasswdError(f"Error: Password file {path} is not valid UTF-8.") from None
    lines = [line.rstrip("\r") for line in text.split("\n")]
    if lines and lines[-1] == "":
        lines.pop()  # the final newline does not start another line
    for number, line in enumerate(lines, start=1):
        if not is_blank_or_comment(line) and ":" not in line:
            raise _PasswdError(f"Error: Corrupt password file at line {number}.")
    return lines


def _entry_user(line: str) -> str | None:
    if is_blank_or_comment(line):
        return None
    return line.partition(":")[0].strip()


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` with ``text``, mode 0600, so readers see the old or the new file only.

    Raises:
        OSError: the temporary file could not be written or renamed (``path`` is untouched and
            no temporary file is left behind).
    """
    directory = path.parent
    fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as tmp:
            os.fchmod(tmp.fileno(), 0o600)
            tmp.write(text.encode("utf-8"))
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    # Make the rename itself durable; not every filesystem supports fsync on a directory.
    with contextlib.suppress(OSError):
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _render(lines: list[str]) -> str:
    return "".join(f"{line}\n" for line in lines)


def _ask_password(prompt: Callable[[str], str]) -> str:
    try:
        first = prompt("Password: ")
        second = prompt("Reenter password: ")
    except EOFError:
        raise _PasswdError("Error: No password given.") from None
    if first != second:
        raise _PasswdError("Error: Passwords do not match.")
    return first


def _upgrade(lines: list[str], hash_type: str) -> list[str]:
    result: list[str] = []
    for number, line in enumerate(lines, start=1):
        user = _entry_user(line)
        if user is None:
            result.append(line)
            continue
        stored = line.partition(":")[2].strip()
        try:
            parse_password_hash(stored)
        except ValueError:
            pass
        else:
            result.append(line)  # already hashed: hashing the hash would lock the user out
            continue
        password = stored.split(":", 1)[0].strip()
        if not user:
            raise _PasswdError(f"Error: Empty username at line {number}.")
        if not password:
            raise _PasswdError(f"Error: Empty password for user {user} at line {number}.")
        result.append(f"{user}:{_hash(password, hash_type)}")
    return result


def _run(argv: list[str], prompt: Callable[[str], str]) -> None:
    options = _build_parser().parse_args(argv)
    args: list[str] = options.args
    if options.upgrade:
        if options.create or options.delete or options.batch or len(args) != 1:
            raise _UsageError("-U takes only the password file")
        path = Path(args[0])
        write_atomically(path, _render(_upgrade(_read_lines(path), options.hash_type)))
        return
    if options.create and options.delete:
        raise _UsageError("-c and -D cannot be used together")
    if options.delete and options.batch:
        raise _UsageError("-b and -D cannot be used together")
    expected = 3 if options.batch else 2
    if len(args) != expected:
        raise _UsageError(
            "expected: passwordfile username password"
            if options.batch
            else "expected: passwordfile username"
        )
    path, username = Path(args[0]), args[1]
    if not options.delete:
        _check_username(username)

    lines: list[str] = [] if options.create else _read_lines(path)
    if options.delete:
        kept = [line for line in lines if _entry_user(line) != username]
        if len(kept) == len(lines):
            raise _PasswdError(f"Warning: User {username} not found in password file.")
        write_atomically(path, _render(kept))
        return

    if options.create and path.is_dir():
        raise _PasswdError(f"Error: {path} is a directory.")
    password = args[2] if options.batch else _ask_password(prompt)
    _check_password(password)
    entry = f"{username}:{_hash(password, options.hash_type)}"
    replaced = False
    updated: list[str] = []
    for line in lines:
        if _entry_user(line) == username:
            if not replaced:
                updated.append(entry)
                replaced = True
            continue  # drop duplicates of the same user
        updated.append(line)
    if not replaced:
        updated.append(entry)
    write_atomically(path, _render(updated))


def main(argv: list[str], *, prompt: Callable[[str], str] = getpass_module.getpass) -> int:
    """Run ``mqttd passwd``.

    Args:
        argv: the arguments after ``passwd`` (e.g. ``["-c", "-b", "file", "user", "pw"]``).
        prompt: reads a password without echo; ``getpass.getpass`` unless a test substitutes it.

    Returns:
        0 on success, 1 on an error, 2 on a usage error (message on stderr in both cases).
    """
    try:
        _run(argv, prompt)
    except _UsageError as exc:
        _build_parser().print_usage(sys.stderr)
        print(f"mqttd passwd: error: {exc}", file=sys.stderr)
        return 2
    except _PasswdError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"Error: {exc.filename or ''}: {exc.strerror}", file=sys.stderr)
        return 1
    except SystemExit as exc:  # argparse's --help
        return exc.code if isinstance(exc.code, int) else 0
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
