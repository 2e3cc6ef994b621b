"""Secrets out of text that is printed or logged: URL passwords and known secret values."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping

SECRET_VARIABLES = (
    "INTERNAL_AUTH_TOKEN",
    "SEARCH_AUTH_TOKEN",
    "SEARCH_READ_TOKEN",
    "INDEX_TOKEN",
    "TRITON_ADMIN_KEY",
    "REDIS_PASSWORD",
)
"""Variables whose values are secrets (REDIS_URL's password is found in the URL itself)."""

_URL_PASSWORD = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@\s]+@", re.IGNORECASE)
MASK = "***"


def secret_values(environ: Mapping[str, str]) -> list[str]:
    """The secrets an environment carries: the SECRET_VARIABLES' values and URL passwords."""
    found = [environ[name] for name in SECRET_VARIABLES if environ.get(name)]
    for value in environ.values():
        found += [m.group(0)[len(m.group(1)) : -1] for m in _URL_PASSWORD.finditer(value)]
    return found


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with every URL password and every one of `secrets` replaced by ***."""
    text = _URL_PASSWORD.sub(rf"\g<1>{MASK}@", text)
    for secret in sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


class RedactingFilter(logging.Filter):
    """A handler filter that redacts every record's final message (arguments included)."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self.secrets = secrets
        """Shared, not copied: secrets added later (a generated password) are redacted too."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact(message, self.secrets)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True
