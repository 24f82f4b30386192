"""A plain reference for accounts, written from ``docs/models.md#accounts``.

Imports nothing from ``engagement_index``: the members' indices come from
``tests.reference.lifecycles`` (the independent contact reference), the account levels from
the documented formulas, applied to the members' states at the asked time. Memberships follow
the documented rule (the latest event naming an account, by timestamp; a group call of a
contact without a state counts it on the account without being remembered). Licences: the
latest ``account.licences`` event or ``licences`` trait of a group call, by timestamp.

Not modelled: the account lifecycles (tests state the stages they expect from the levels).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.reference.engagement import parse_time
from tests.reference.lifecycles import LifecycleReference, ReferenceModel

_UNITS = {"d": 86_400_000, "h": 3_600_000, "m": 60_000, "s": 1000}


def _duration_ms(value: Any) -> int:
    if isinstance(value, int | float):
        return round(value * 1000)
    return round(float(value[:-1]) * _UNITS[value[-1]])


@dataclass
class RefAccount:
    """What the reference knows of an account."""

    members: set[str] = field(default_factory=set)
    stateless: set[str] = field(default_factory=set)
    licences: int | None = None
    licences_at: int | None = None


class AccountReference:
    """Events in arrival order in; account levels at a time out."""

    def __init__(self, model: str | Path) -> None:
        text = Path(model).read_text() if isinstance(model, Path) else model
        raw = yaml.safe_load(text)
        spec = raw["accounts"]
        self.active_ms = _duration_ms(spec["active_within"])
        self.trait = spec.get("licences_trait", "licences")
        self.indices: dict[str, dict[str, Any]] = spec["indices"]
        self.contacts = LifecycleReference(ReferenceModel.load(text))
        self.accounts: dict[tuple[str, str], RefAccount] = {}
        #: contact -> (account id, since)
        self.membership: dict[tuple[str, str], tuple[str, int]] = {}
        self.last_event: dict[tuple[str, str], int] = {}

    def _account(self, tenant: str, account_id: str) -> RefAccount:
        return self.accounts.setdefault((tenant, account_id), RefAccount())

    def _licences(self, account: RefAccount, value: Any, at: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            return
        if account.licences_at is None or at >= account.licences_at:
            account.licences, account.licences_at = value, at

    def _join(self, key: tuple[str, str], account_id: str, at: int) -> None:
        tenant, contact_id = key
        current = self.membership.get(key)
        if current is not None and at < current[1]:
            return
        if current is not None and current[0] != account_id:
            self._account(tenant, current[0]).members.discard(contact_id)
        self.membership[key] = (account_id, at)
        self._account(tenant, account_id).members.add(contact_id)

    def feed(self, event: dict[str, Any] | str | bytes) -> None:
        record = json.loads(event) if isinstance(event, str | bytes) else event
        tenant = record.get("tenant", "default")
        key = (tenant, record["contact_id"])
        at = parse_time(record["timestamp"])
        account_id: str = record.get("account_id") or ""
        props = record.get("properties") or {}
        if record["type"] == "account.licences":
            self._licences(self._account(tenant, account_id), props.get("licences"), at)
            return
        if record["type"] == "account.group":
            account = self._account(tenant, account_id)
            if key in self.contacts.contacts:
                self._join(key, account_id, at)
            else:
                account.stateless.add(key[1])
            if self.trait in props:
                self._licences(account, props[self.trait], at)
            return
        self.contacts.feed(record)
        self.last_event[key] = max(self.last_event.get(key, at), at)
        if account_id != "":
            self._join(key, account_id, at)

    def levels(self, tenant: str, account_id: str, at_ms: int) -> dict[str, Any]:
        """Members, active users, licences and every level of the account at ``at_ms``."""
        account = self.accounts[(tenant, account_id)]
        with_state = sorted(account.members)
        stateless = account.stateless - account.members
        indices = {c: self.contacts.evaluate((tenant, c), at_ms)["index"] for c in with_state}
        values = sorted([*indices.values(), *([0.0] * len(stateless))], reverse=True)
        n = len(values)
        active = sum(1 for c in with_state if at_ms - self.last_event[(tenant, c)] < self.active_ms)
        out: dict[str, Any] = {"members": n, "active_users": active, "licences": account.licences}
        for name, spec in self.indices.items():
            if n == 0:
                out[name] = 0.0
            elif spec["aggregate"] == "top_k_mean":
                top = values[: min(spec["k"], n)]
                out[name] = sum(top) / len(top)
            elif spec["aggregate"] == "max":
                out[name] = values[0]
            else:
                out[name] = 100.0 * sum(1 for x in values if x >= spec["level"]) / n
        licences = account.licences
        out["utilisation"] = 100.0 * active / licences if licences else 100.0
        out["member_indices"] = indices
        return out
