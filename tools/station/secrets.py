"""The station's secrets: the Wi-Fi password and the publisher token, read from the environment
or a file that fleet.yaml names, held in a wrapper that never prints its value, and a redactor
that scrubs them (and board private keys) out of any text before it is shown or logged.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Mapping

from tools.fleet import SecretRef


class SecretError(ValueError):
    """A secret is missing or its file is unreadable or too open; names where it was looked for."""


class Secret:
    """A secret string. `str()`/`repr()` show a placeholder; only `reveal()` gives the value."""

    __slots__ = ("_value", "what")

    def __init__(self, value: str, what: str) -> None:
        self._value = value
        self.what = what

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"<secret {self.what}>"

    __str__ = __repr__

    def __reduce__(self) -> tuple[type[Secret], tuple[str, str]]:
        # Pickled only to hand it to a station worker process over a private pipe.
        return (Secret, (self._value, self.what))


def resolve_secret(ref: SecretRef, what: str, environ: Mapping[str, str] | None = None
                   ) -> Secret:
    """Read the secret `ref` points at. Raises SecretError naming the variable or file.

    A file must not be readable by group or others (like ssh keys): a secret in a world-readable
    file is already leaked.
    """
    environ = os.environ if environ is None else environ
    if ref.env is not None:
        value = environ.get(ref.env)
        if not value:
            raise SecretError(f"{what}: environment variable {ref.env} is not set")
        return Secret(value, what)
    assert ref.file is not None
    try:
        mode = ref.file.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise SecretError(
                f"{what}: {ref.file} is accessible to group/others (mode {mode & 0o777:o}); "
                f"chmod 600 it"
            )
        value = ref.file.read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as err:
        raise SecretError(f"{what}: cannot read {ref.file}: {err.strerror}") from None
    if not value:
        raise SecretError(f"{what}: {ref.file} is empty")
    return Secret(value, what)


class Redactor:
    """Replaces every known secret in a text with a placeholder (defence in depth: error
    messages from libraries may quote what they were given)."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)

    def add(self, *values: str) -> None:
        self._secrets = sorted({*self._secrets, *(v for v in values if len(v) >= 4)},
                               key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text
