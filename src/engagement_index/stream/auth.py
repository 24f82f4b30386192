"""Bearer-token auth of the worker's query API, with tokens scoped to tenants.

Tokens are never stored: the tokens file (a mounted Secret) and ``ENGAGEMENT_INDEX_API_TOKENS``
hold ``sha256:<hex>`` digests of them, each with the tenants it may read (``"*"``: every
tenant). A presented token is hashed and compared with every digest in constant time.
``engagement-index api-token`` makes a new token and prints its digest entry.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from engagement_index.core.events import TENANT_PATTERN
from engagement_index.errors import ConfigError, EngagementIndexError

ALL_TENANTS = "*"
_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_TENANT_RE = re.compile(TENANT_PATTERN)


def token_digest(token: str) -> str:
    """The ``sha256:<hex>`` digest under which ``token`` is configured."""
    return "sha256:" + hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    """A fresh random token (256 bits, URL-safe)."""
    return "eit_" + secrets.token_urlsafe(32)


class ApiTokens(BaseModel):
    """The query API's tokens: what a Kubernetes Secret mounts as ``tokens.yaml``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tokens: dict[str, list[str]] = Field(
        default_factory=dict,
        description='"sha256:<hex digest of the token>" -> tenants it may read ("*": all)',
    )

    @field_validator("tokens")
    @classmethod
    def _check(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for digest, tenants in value.items():
            if not _DIGEST_RE.fullmatch(digest):
                raise ValueError(
                    f"{digest[:12]!r}...: a token entry is 'sha256:' and 64 lowercase hex "
                    "digits (the digest, never the token itself)"
                )
            if not tenants:
                raise ValueError(f"{digest[:15]}...: list at least one tenant (or '*')")
            for tenant in tenants:
                if tenant != ALL_TENANTS and not _TENANT_RE.fullmatch(tenant):
                    raise ValueError(f"{tenant!r} is not a tenant id or '*'")
        return value

    def merged(self, other: ApiTokens) -> ApiTokens:
        """These tokens with ``other``'s added (``other`` wins on the same digest)."""
        return ApiTokens(tokens={**self.tokens, **other.tokens})


def _problems(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}"
        for err in exc.errors()
    )


def load_tokens(file: Path | None, direct: Mapping[str, list[str]]) -> ApiTokens:
    """The tokens file (YAML/JSON, if any) with the directly given digests merged over it."""
    base = ApiTokens()
    if file is not None:
        try:
            raw: Any = yaml.safe_load(file.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read API tokens file {file}: {exc}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"{file} is not valid YAML: {exc}") from exc
        try:
            base = ApiTokens.model_validate(raw or {})
        except ValidationError as exc:
            raise ConfigError(f"{file}: {_problems(exc)}") from exc
    try:
        return base.merged(ApiTokens(tokens=dict(direct)))
    except ValidationError as exc:
        raise ConfigError(f"ENGAGEMENT_INDEX_API_TOKENS: {_problems(exc)}") from exc


class Unauthorized(EngagementIndexError):
    """No valid bearer token: answer 401 with ``message``."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class TokenAuth:
    """Checks ``Authorization: Bearer`` headers against the configured digests."""

    def __init__(self, tokens: ApiTokens) -> None:
        self._entries = [
            (bytes.fromhex(digest.removeprefix("sha256:")), frozenset(tenants))
            for digest, tenants in tokens.tokens.items()
        ]

    def __len__(self) -> int:
        return len(self._entries)

    def tenants(self, header: str | None) -> frozenset[str]:
        """The tenants the header's token may read; ``Unauthorized`` if there is none."""
        if not header:
            raise Unauthorized("a bearer token is required (Authorization: Bearer <token>)")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("use Authorization: Bearer <token>")
        presented = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        allowed: frozenset[str] | None = None
        for digest, tenants in self._entries:  # no early exit: same work for every token
            if hmac.compare_digest(presented, digest):
                allowed = tenants
        if allowed is None:
            raise Unauthorized("invalid token")
        return allowed

    @staticmethod
    def may_read(tenants: frozenset[str], tenant: str) -> bool:
        """True if a token with ``tenants`` may read ``tenant``'s contacts."""
        return ALL_TENANTS in tenants or tenant in tenants
