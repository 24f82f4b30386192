"""The account of the accounts tests: 20 members, 10 licences, one member about to go quiet.

``scenario(now_ms)`` gives the events in two phases (the three most engaged members first,
then the licences and everyone else) and the time at which member ``c-05`` stops being an
active user. Hand computation, at ``now_ms`` (docs/models.md#accounts):

* members 20 (every contact's events name ``acct-1``), licences 10;
* active users 6: ``c-00`` … ``c-05`` have an event in the last 14 days, ``c-06`` … ``c-19``
  only one 20 days or more ago; utilisation 6 / 10 = 0.6 (the level: 60);
* ``engagement`` (mean of the top 3) is the mean of the three champions' indices, ``champion``
  the largest of them, ``engaged_share`` 100 * 3 / 20 = 15 (only they reach 40);
* ``health``: engagement >= 40 and utilisation >= 60, so ``healthy`` whatever the arrival order
  (from at_risk or churning ``recovered`` holds; out of healthy ``slipping`` does not);
* at ``quiet_at`` = ``c-05``'s event + 14 days, active users drop to 5, utilisation to 50 < 55:
  ``slipping`` fires, healthy -> at_risk, reason ``decay``, at exactly that millisecond.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from engagement_index.core.timestamps import MS_PER_DAY, ms_to_rfc3339

TENANT = "acme"
ACCOUNT = "acct-1"
HOUR = 3_600_000


@dataclass(frozen=True)
class Scenario:
    first: list[bytes]
    second: list[bytes]
    quiet_at: int

    @property
    def events(self) -> list[bytes]:
        return self.first + self.second


def _event(event_id: str, contact: str, event_type: str, at: int, **extra: object) -> bytes:
    body: dict[str, object] = {
        "event_id": event_id,
        "tenant": TENANT,
        "contact_id": contact,
        "type": event_type,
        "timestamp": ms_to_rfc3339(at),
        "account_id": ACCOUNT,
    }
    body.update(extra)
    return json.dumps(body).encode()


def scenario(now_ms: int, quiet_in_ms: int = 60_000) -> Scenario:
    first = []
    for c in range(3):  # the champions: 6 form submits and 8 clicks in the last hour
        for j in range(14):
            event_type = "web.form_submit" if j < 6 else "email.click"
            at = now_ms - HOUR + c * 60_000 + j * 1000
            first.append(_event(f"c-0{c}-{j}", f"c-0{c}", event_type, at))
    quiet_at = now_ms + quiet_in_ms
    second = [
        _event("lic-1", "crm", "account.licences", now_ms - 25 * MS_PER_DAY,
               properties={"licences": 10}),
        _event("c-03-0", "c-03", "email.click", now_ms - 2 * HOUR),
        _event("c-04-0", "c-04", "email.click", now_ms - 2 * HOUR + 1000),
        _event("c-05-0", "c-05", "email.click", quiet_at - 14 * MS_PER_DAY),
    ]  # fmt: skip
    for c in range(6, 20):
        at = now_ms - 20 * MS_PER_DAY - c * HOUR
        second.append(_event(f"c-{c:02d}-0", f"c-{c:02d}", "web.page_view", at))
    return Scenario(first, second, quiet_at)
