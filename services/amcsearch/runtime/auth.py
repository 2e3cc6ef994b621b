"""Bearer-token check for write RPCs. The token comes from settings and is never logged."""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from amcsearch.runtime.errors import PermissionDenied, Unauthenticated


def check_bearer(
    metadata: Iterable[tuple[str, str | bytes]] | None,
    token: str | tuple[str, ...],
    method: str,
    purpose: str = "write operations",
) -> None:
    """Pass when no token is set (auth off) or the call carries `authorization: Bearer <t>` with
    one of the tokens (`token` may be several: e.g. the read token or the write token)."""
    tokens = tuple(t for t in ((token,) if isinstance(token, str) else token) if t)
    if not tokens:
        return
    values = [v for k, v in (metadata or ()) if k.lower() == "authorization"]
    if not values:
        raise Unauthenticated(f"{method} needs an 'authorization: Bearer <token>' header")
    given = values[0].decode() if isinstance(values[0], bytes) else values[0]
    scheme, _, credential = given.partition(" ")
    if scheme.lower() != "bearer" or not credential:
        raise Unauthenticated(f"{method}: the authorization header must be 'Bearer <token>'")
    given_token = credential.strip().encode()
    if not any(hmac.compare_digest(given_token, t.encode()) for t in tokens):
        raise PermissionDenied(f"{method}: the bearer token is not valid for {purpose}")
