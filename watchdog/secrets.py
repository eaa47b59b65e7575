"""Secret references: ``env:NAME``, ``file:PATH`` or ``credential:NAME``; never inline values.

``credential:NAME`` reads ``$CREDENTIALS_DIRECTORY/NAME``, where systemd puts what
``LoadCredential=``/``SetCredentialEncrypted=`` provide. A resolved value lives in
a :class:`Secret`, whose ``repr`` and ``str`` show only the reference, so it
cannot leak into a log line, a status output or the database by accident.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

SCHEMES = ("env", "file", "credential")


class SecretError(ValueError):
    """A reference is malformed or points at nothing; the message never contains a value."""


class Secret:
    """A resolved secret. ``reveal()`` is the only way to the value."""

    __slots__ = ("_value", "ref")

    def __init__(self, ref: str, value: str) -> None:
        self.ref = ref
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({self.ref!r})"

    def __str__(self) -> str:
        return f"<secret {self.ref}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and (self.ref, self._value) == (other.ref, other._value)

    def __hash__(self) -> int:
        return hash(self.ref)


def is_reference(text: str) -> bool:
    scheme, sep, _ = text.partition(":")
    return bool(sep) and scheme in SCHEMES


def resolve(ref: str, *, base_dir: Path, environ: Mapping[str, str]) -> Secret:
    """Resolve a reference to its value; relative ``file:`` paths are relative to ``base_dir``."""
    scheme, sep, name = ref.partition(":")
    if not sep or scheme not in SCHEMES:
        raise SecretError(
            "must be a secret reference (env:NAME, file:PATH or credential:NAME); "
            "secrets are never written inline"
        )
    if not name:
        raise SecretError(f"{scheme}: reference without a name")
    if scheme == "env":
        if name not in environ:
            raise SecretError(f"environment variable {name} is not set")
        value = environ[name]
    elif scheme == "file":
        value = _read(base_dir / name, f"file {base_dir / name}")
    else:
        creds = environ.get("CREDENTIALS_DIRECTORY")
        if not creds:
            raise SecretError(
                f"credential:{name} needs $CREDENTIALS_DIRECTORY (set by systemd for "
                "LoadCredential= in the unit); not set"
            )
        if "/" in name or name in (".", ".."):
            raise SecretError(f"credential name {name!r} must not contain '/'")
        value = _read(Path(creds) / name, f"credential {name}")
    if not value:
        raise SecretError(f"{ref} is empty")
    return Secret(ref, value)


def _read(path: Path, what: str) -> str:
    try:
        data = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SecretError(f"{what} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SecretError(f"{what} cannot be read: {type(exc).__name__}") from None
    # Files made with `echo` end in a newline that is not part of the secret.
    return data[:-1] if data.endswith("\n") else data
