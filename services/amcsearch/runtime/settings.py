"""Settings from the environment: one frozen dataclass per concern, read once at start.

A field's variable is `<PREFIX>_<FIELD>` upper-cased, or the name in its metadata "env" (for the
settings every service shares, such as TRITON_URL and REDIS_URL). Bad values fail at start with
the variable's name and what was expected.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")


class SettingsError(ValueError):
    """A variable of the environment holds a value its setting cannot take."""


def _convert(raw: str, kind: Any, variable: str) -> Any:
    try:
        if kind is bool:
            lowered = raw.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected true/false")
        if kind in (int, float, str):
            return kind(raw)
    except ValueError as error:
        raise SettingsError(f"{variable}={raw!r}: {error}") from error
    raise SettingsError(f"{variable}: settings of type {kind} are not supported")


def from_env(cls: type[T], prefix: str = "", environ: Mapping[str, str] | None = None, **overrides: Any) -> T:
    """Build `cls` from the environment; nested dataclass fields are read with their own prefix."""
    environ = os.environ if environ is None else environ
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        if field.name in overrides:
            values[field.name] = overrides[field.name]
            continue
        kind = hints[field.name]
        if dataclasses.is_dataclass(kind):
            values[field.name] = from_env(kind, field.metadata.get("prefix", prefix), environ)  # type: ignore[arg-type]
            continue
        variable = field.metadata.get("env") or f"{prefix}_{field.name}".upper().lstrip("_")
        if variable in environ:
            values[field.name] = _convert(environ[variable], kind, variable)
    settings = cls(**values)
    validate = getattr(settings, "validate", None)
    if validate is not None:
        validate()
    return settings


def env(name: str, **kwargs: Any) -> Any:
    """A field read from a fixed variable name, the same for every service."""
    default = kwargs.pop("default")
    return dataclasses.field(default=default, metadata={"env": name, **kwargs.pop("metadata", {})})


def nested(cls: type, prefix: str | None = None) -> Any:
    """A nested settings group; `prefix` overrides the service's own prefix for its variables."""
    metadata = {} if prefix is None else {"prefix": prefix}
    return dataclasses.field(default_factory=cls, metadata=metadata)


@dataclasses.dataclass(frozen=True)
class ServerSettings:
    """How a gRPC service listens. Variables: <SERVICE>_HOST, <SERVICE>_PORT, ..."""

    host: str = "127.0.0.1"
    """Bind address; internal services stay on loopback unless told otherwise."""
    port: int = 0
    """gRPC port; 0 picks a free one (tests)."""
    metrics_port: int = 0
    """Prometheus /metrics port; 0 picks a free one, -1 disables it."""
    max_message_bytes: int = 64 * 1024 * 1024
    """Largest request or reply; larger ones get RESOURCE_EXHAUSTED from gRPC itself."""
    max_concurrent_rpcs: int = 256
    """RPCs handled at once; further ones get RESOURCE_EXHAUSTED instead of queueing forever."""
    grace_seconds: float = 5.0
    """Graceful shutdown period on SIGTERM; keep it below the pod's termination grace period."""
    default_deadline_seconds: float = 30.0
    """Deadline applied to downstream calls when the caller set none."""
    tls_cert_file: str = ""
    """PEM certificate chain: when set (with tls_key_file), the port serves TLS only."""
    tls_key_file: str = ""
    tls_client_ca_file: str = ""
    """PEM CA bundle: when set, clients must present a certificate it signed (mTLS)."""
    internal_token: str = env("INTERNAL_AUTH_TOKEN", default="")
    """Service-to-service token: when set, the internal services answer only calls that carry
    'authorization: Bearer <token>' (health and reflection stay open). Every service sends it."""

    def validate(self) -> None:
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise SettingsError("TLS needs both <SERVICE>_TLS_CERT_FILE and <SERVICE>_TLS_KEY_FILE")
        if self.tls_client_ca_file and not self.tls_cert_file:
            raise SettingsError("<SERVICE>_TLS_CLIENT_CA_FILE (mTLS) needs the server's TLS certificate too")
        if not 0 <= self.port <= 65535:
            raise SettingsError(f"port {self.port} is not in 0..65535")
        if self.max_concurrent_rpcs < 1:
            raise SettingsError("max_concurrent_rpcs must be at least 1")


TRITON_ADMIN_HEADER = "admin-key"
"""The header Triton's restricted protocols ask for (amcsearch/processes.py starts Triton so):
on HTTP as it is, on gRPC as metadata `triton-grpc-protocol-admin-key` (Triton's prefix), which
runtime/triton.py sends."""


@dataclasses.dataclass(frozen=True)
class TritonSettings:
    """Where Triton listens: TRITON_URL (host:port of its gRPC endpoint)."""

    url: str = env("TRITON_URL", default="127.0.0.1:8001")
    admin_key: str = env("TRITON_ADMIN_KEY", default="")
    """Sent as the 'triton-admin-key' header on the calls Triton restricts (model configs): the
    launcher generates one when INTERNAL_AUTH_TOKEN is set. Never logged."""
    canary_timeout_seconds: float = env("TRITON_CANARY_TIMEOUT_SECONDS", default=10.0)
    """Time a readiness canary inference may take (the first one warms the model)."""
    canary_interval_seconds: float = env("TRITON_CANARY_INTERVAL_SECONDS", default=30.0)
    """Between canaries, readiness asks Triton's model-ready endpoint only."""
    call_ceiling_seconds: float = env("TRITON_CALL_CEILING_SECONDS", default=60.0)
    """The gRPC deadline of every inference call, whatever the caller's: the caller's own deadline
    is kept in the service, so that no call is cancelled (runtime/triton.py says why)."""


@dataclasses.dataclass(frozen=True)
class CacheSettings:
    """The Redis embedding cache: REDIS_URL and the CACHE_* variables."""

    redis_url: str = env("REDIS_URL", default="redis://127.0.0.1:6379/0")
    ttl_seconds: int = env("CACHE_TTL_SECONDS", default=7 * 24 * 3600)
    timeout_seconds: float = env("CACHE_TIMEOUT_SECONDS", default=0.05)
    """Socket timeout of each Redis call: a slow cache costs a miss, not a slow request."""
    breaker_failures: int = env("CACHE_BREAKER_FAILURES", default=3)
    """Consecutive errors after which the cache is skipped for breaker_reset_seconds."""
    breaker_reset_seconds: float = env("CACHE_BREAKER_RESET_SECONDS", default=2.0)
    float16: bool = env("CACHE_FLOAT16", default=False)
    """Store vectors as float16 (half the memory, ~1e-3 relative error)."""
    enabled: bool = env("CACHE_ENABLED", default=True)


@dataclasses.dataclass(frozen=True)
class ImageLimits:
    """Limits on incoming images: <SERVICE>_MAX_IMAGE_BYTES, _MAX_IMAGE_PIXELS, _MAX_IMAGE_SIDE,
    _MAX_ASPECT_RATIO, _DECODE_CONCURRENCY. All checked from the header, before decoding."""

    max_image_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int = 12_000_000
    """Width x height (a 4000 x 3000 photo); a PNG or WebP of this size decodes in ~85 MB."""
    max_image_side: int = 8192
    max_aspect_ratio: float = 16.0
    """Longest side over shortest: 40,000,000 x 1 is not a photo."""
    decode_concurrency: int = 2
    """Decodes at once per process: the peak decode memory is at most this many images."""
    image_size: int = 128
    """Side of the square the models take; every image is resized to it."""

    def validate(self) -> None:
        if self.decode_concurrency < 1:
            raise SettingsError("<SERVICE>_DECODE_CONCURRENCY must be at least 1")
        if self.max_aspect_ratio < 1:
            raise SettingsError("<SERVICE>_MAX_ASPECT_RATIO must be at least 1")


@dataclasses.dataclass(frozen=True)
class ClientTLSSettings:
    """How a service calls the other services: plaintext unless TLS_CA_FILE is set."""

    ca_file: str = env("TLS_CA_FILE", default="")
    """PEM CA bundle that signed the services' certificates."""
    cert_file: str = env("TLS_CLIENT_CERT_FILE", default="")
    """This service's client certificate, for servers that require mTLS."""
    key_file: str = env("TLS_CLIENT_KEY_FILE", default="")
    internal_token: str = env("INTERNAL_AUTH_TOKEN", default="")
    """Sent as 'authorization: Bearer <token>' on every call to another service."""
