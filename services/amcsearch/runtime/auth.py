"""Bearer-token check for write RPCs. The token comes from settings and is never logged."""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from amcsearch.runtime.errors import PermissionDenied, Unauthenticated


def check_bearer(metadata: Iterable[tuple[str, str | bytes]] | None, token: str, method: str) -> None:
    """Pass when `token` is empty (auth off) or the call carries `authorization: Bearer <token>`."""
    if not token:
        return
    values = [v for k, v in (metadata or ()) if k.lower() == "authorization"]
    if not values:
        raise Unauthenticated(f"{method} needs an 'authorization: Bearer <token>' header")
    given = values[0].decode() if isinstance(values[0], bytes) else values[0]
    scheme, _, credential = given.partition(" ")
    if scheme.lower() != "bearer" or not credential:
        raise Unauthenticated(f"{method}: the authorization header must be 'Bearer <token>'")
    if not hmac.compare_digest(credential.strip().encode(), token.encode()):
        raise PermissionDenied(f"{method}: the bearer token is not valid for write operations")
