"""Account levels against the independent reference (``tests/reference/accounts.py``).

Random members with events naming one of two accounts (so members move), licences events, in
a random arrival order: after the replay, every account's members, active users, licences and
levels at a later time equal the reference's, computed from the members' states at that time by
the documented formulas (docs/models.md#accounts).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engagement_index.core.accounts import evaluate_account
from engagement_index.core.model import load_model
from engagement_index.core.timestamps import ms_to_rfc3339
from engagement_index.replay import Replayer
from tests.reference.accounts import AccountReference

B2B = Path(__file__).resolve().parents[2] / "config" / "models" / "b2b-qualification.yaml"
MODEL = load_model(B2B)
T0 = 1_795_000_000_000
DAY = 86_400_000
TYPES = ("web.form_submit", "web.form_submit", "email.click", "web.page_view", "email.sent")
HOUR = 3_600_000

events = st.lists(
    st.tuples(
        st.integers(0, 3),  # member
        st.sampled_from(TYPES),
        st.integers(0, 960).map(lambda h: h * HOUR),  # time (whole hours: equal times happen)
        st.sampled_from(["a", "b", None]),  # account named
    ),
    min_size=1,
    max_size=25,
)
licences = st.lists(
    st.tuples(st.sampled_from(["a", "b"]), st.integers(0, 12), st.integers(0, 40 * DAY)),
    max_size=3,
)


def _lines(
    raw: list[tuple[int, str, int, str | None]], lic: list[tuple[str, int, int]]
) -> list[str]:
    out: list[dict[str, Any]] = []
    for n, (member, etype, at, account) in enumerate(raw):
        body: dict[str, Any] = {
            "event_id": f"e{n}",
            "tenant": "t",
            "contact_id": f"m{member}",
            "type": etype,
            "timestamp": ms_to_rfc3339(T0 + at),
        }
        if account is not None:
            body["account_id"] = account
        out.append(body)
    for n, (account, count, at) in enumerate(lic):
        out.append(
            {
                "event_id": f"l{n}",
                "tenant": "t",
                "contact_id": "crm",
                "type": "account.licences",
                "timestamp": ms_to_rfc3339(T0 + at),
                "account_id": account,
                "properties": {"licences": count},
            }
        )
    return [json.dumps(b) for b in out]  # fmt: skip


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events, licences, st.randoms(use_true_random=False), st.integers(0, 30 * DAY))
def test_account_levels_equal_the_reference(
    raw: list[tuple[int, str, int, str | None]],
    lic: list[tuple[str, int, int]],
    rng: Any,
    later: int,
) -> None:
    lines = _lines(raw, lic)
    rng.shuffle(lines)
    replayer = Replayer(MODEL)
    reference = AccountReference(B2B)
    for line in lines:
        replayer.feed(line)
        reference.feed(line)
    assert not replayer.rejects
    acc = MODEL.accounts_compiled
    assert acc is not None
    at = T0 + 40 * DAY + later
    assert set(replayer.accounts) == set(reference.accounts)
    for (tenant, account_id), state in replayer.accounts.items():
        got = evaluate_account(state, at, acc)
        want = reference.levels(tenant, account_id, at)
        assert (got.members, got.active_users, got.licences) == (
            want["members"],
            want["active_users"],
            want["licences"],
        )
        for name, value in got.indices.items():
            assert value == pytest.approx(want[name], abs=1e-9), name
