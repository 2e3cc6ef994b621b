"""Credentials the tools send with writes."""

from __future__ import annotations

import os


def write_metadata() -> list[tuple[str, str]]:
    """Metadata for Index and Delete: the bearer token of $SEARCH_AUTH_TOKEN (the server's own
    setting name, as the CLI sends it), if any."""
    token = os.environ.get("SEARCH_AUTH_TOKEN", "")
    return [("authorization", f"Bearer {token}")] if token else []
