"""Erasure (right to be forgotten): the command that asks for it and the record that confirms it.

An :class:`ErasureRequest` goes to the erasure command topic keyed by the contact key, so it
reaches the worker that owns the contact; the worker deletes the contact's state and history
and publishes an :class:`Erasure` to the erasures topic for downstream systems.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from engagement_index.core.events import TENANT_PATTERN, ContactKey

_RFC3339_MS = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$"


class ErasureRequest(BaseModel):
    """Erase one contact's state (the erasure command topic's record value)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    erasure_id: str = Field(min_length=1, max_length=128, description="id of this request")
    tenant: Annotated[str, StringConstraints(pattern=TENANT_PATTERN)]
    contact_id: str = Field(min_length=1, max_length=256)
    requested_at: str = Field(pattern=_RFC3339_MS, description="RFC 3339, UTC, milliseconds")
    requested_by: str | None = Field(
        default=None, max_length=256, description="who asked (a person or system), for the audit"
    )

    @property
    def key(self) -> ContactKey:
        """The contact to erase."""
        return ContactKey(self.tenant, self.contact_id)

    def to_json_bytes(self) -> bytes:
        """Compact JSON, UTF-8."""
        return self.model_dump_json().encode("utf-8")


class Erasure(BaseModel):
    """A contact's state was erased (the erasures topic's record value, keyed by contact)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    erasure_id: str
    tenant: str
    contact_id: str
    found: bool = Field(description="false: the worker held no state for the contact")
    requested_at: str = Field(pattern=_RFC3339_MS)
    erased_at: str = Field(pattern=_RFC3339_MS, description="when the worker deleted the state")
    requested_by: str | None = None

    def to_json_bytes(self) -> bytes:
        """Compact JSON, UTF-8."""
        return self.model_dump_json().encode("utf-8")
