"""core.merge by hand: marker rules, blocked ids, duplicate windows, and the replay envelope."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from engagement_index.core.compiled import model_fingerprint
from engagement_index.core.dedupe import EMPTY as EMPTY_SEEN
from engagement_index.core.dedupe import admit
from engagement_index.core.events import ContactKey, FailureType, parse_event_fields
from engagement_index.core.lifecycle import evaluate, step
from engagement_index.core.merge import (
    MergeContext,
    is_blocked,
    merge_id_of,
    merge_states,
    unite_seen,
)
from engagement_index.core.model import ScoringModel, load_model
from engagement_index.core.timestamps import ms_to_rfc3339
from engagement_index.errors import ModelError
from engagement_index.replay import Replayer

ROOT = Path(__file__).resolve().parents[3]
DEFAULT = ROOT / "config" / "models" / "default.yaml"
T0 = 1_793_527_200_000  # 2026-11-01T10:00:00Z
HOUR = 3_600_000


def ev(n: int, contact: str, at_ms: int, etype: str) -> Any:
    return parse_event_fields(
        json.dumps(
            {"event_id": f"e{n}", "tenant": "acme", "contact_id": contact, "type": etype,
             "timestamp": ms_to_rfc3339(at_ms)}
        )
    )  # fmt: skip


def model_with(rules: dict[str, str] | None) -> ScoringModel:
    raw = yaml.safe_load((ROOT / "config" / "models" / "journey.yaml").read_text())
    if rules is not None:
        raw["merge"] = {"markers": rules}
    return ScoringModel.model_validate(raw)


def states(model: ScoringModel, known: list[Any], anon: list[Any]) -> tuple[Any, Any]:
    cm = model.compiled
    k = a = None
    for e in known:
        k, _ = step(k, e, cm)
    for e in anon:
        a, _ = step(a, e, cm)
    return k, a


def merged(model: ScoringModel, known: list[Any], anon: list[Any]) -> Any:
    k, a = states(model, known, anon)
    context = MergeContext(ContactKey("acme", "user"), "m")
    return merge_states(k, a, model.compiled, context)


def test_markers_latest_by_default_and_earliest_when_declared() -> None:
    # known: a ticket opened at +2h; anon: a ticket opened at +0h, resolved at +1h
    known = [ev(1, "user", T0 + 2 * HOUR, "support.ticket_opened")]
    anon = [
        ev(2, "anon", T0, "support.ticket_opened"),
        ev(3, "anon", T0 + HOUR, "support.ticket_resolved"),
    ]
    latest = merged(model_with(None), known, anon).state
    cm = model_with(None).compiled
    bit = 1 << cm.markers.index("ticket_open")
    assert latest.markers & bit  # the open at +2h is the later change
    assert latest.marker_ms[cm.markers.index("ticket_open")] == T0 + 2 * HOUR
    # the other way round: the resolve (+3h) is later than the known open (+2h)
    anon_later = [*anon[:1], ev(3, "anon", T0 + 3 * HOUR, "support.ticket_resolved")]
    cleared = merged(model_with(None), known, anon_later).state
    assert not cleared.markers & bit
    assert cleared.marker_ms[cm.markers.index("ticket_open")] == T0 + 3 * HOUR
    # earliest: set on the known side, so set, at the earliest setting of a side that has it
    early = model_with({"ticket_open": "earliest"})
    assert early.compiled.marker_merge_earliest == bit
    kept = merged(early, known, anon_later).state
    assert kept.markers & bit
    assert kept.marker_ms[cm.markers.index("ticket_open")] == T0 + 2 * HOUR
    both = merged(early, known, anon[:1]).state
    assert both.marker_ms[cm.markers.index("ticket_open")] == T0


def test_a_set_and_a_clear_at_the_same_instant_clear() -> None:
    known = [ev(1, "user", T0, "support.ticket_opened")]
    anon = [ev(2, "anon", T0, "support.ticket_resolved")]
    model = model_with(None)
    bit = 1 << model.compiled.markers.index("ticket_open")
    assert not merged(model, known, anon).state.markers & bit
    swapped_known = [ev(1, "user", T0, "support.ticket_resolved")]
    swapped_anon = [ev(2, "anon", T0, "support.ticket_opened")]
    assert not merged(model, swapped_known, swapped_anon).state.markers & bit


def test_merge_rules_are_checked_and_change_no_fingerprint() -> None:
    with pytest.raises((ValueError, ModelError), match="unknown marker"):
        model_with({"nope": "latest"})
    with pytest.raises(ValueError, match="latest"):
        model_with({"ticket_open": "first"})
    plain, ruled = model_with(None), model_with({"ticket_open": "earliest"})
    assert model_fingerprint(plain) == model_fingerprint(ruled)


def test_blocked_ids_and_merge_ids() -> None:
    for value in ("", " ", "null", "NULL", "Undefined", "anonymous", "0", None, " nil "):
        assert is_blocked(value), value
    assert not is_blocked("00")
    assert not is_blocked("anon-1")
    assert is_blocked("Guest", frozenset({"guest"}))
    assert merge_id_of("acme", "u", "a") == merge_id_of("acme", "u", "a")
    assert merge_id_of("acme", "u", "a") != merge_id_of("acme", "a", "u")


def test_duplicate_windows_unite_with_the_later_arrival() -> None:
    window = 72 * HOUR
    a = admit(admit(EMPTY_SEEN, "x", T0, window) or EMPTY_SEEN, "y", T0 + 10, window)
    b = admit(EMPTY_SEEN, "x", T0 + 20, window)
    assert a is not None
    assert b is not None
    united = unite_seen(a, b)
    assert united.arrivals == (T0 + 10, T0 + 20)
    assert admit(united, "x", T0 + 30, window) is None
    assert admit(united, "y", T0 + 30, window) is None
    assert admit(united, "z", T0 + 30, window) is not None
    assert len(unite_seen(a, b, max_ids=1)) == 1


def test_a_survivor_without_state_is_the_absorbed_contact_renamed() -> None:
    model = load_model(DEFAULT)
    anon = [ev(n, "anon", T0 + n * HOUR, "web.form_submit") for n in range(6)]
    result = merged(model, [], anon)
    _, a = states(model, [], anon)
    assert result.state.contact_id == "user"
    assert result.state.values == a.values
    assert result.state.entered_ms == a.entered_ms
    assert [(t.reason, t.from_stage, t.to_stage) for t in result.transitions] == [
        ("merge", None, evaluate(a, a.clock_ms, model.compiled).stage)
    ]
    assert result.survivor_index is None
    assert (
        merge_states(None, None, model.compiled, MergeContext(ContactKey("a", "b"), "m")).state
        is None
    )


def test_the_merge_re_evaluates_the_stages_with_reason_merge() -> None:
    # the known contact is new-ish (nurture); the anonymous one is hot: merged, it crosses 60
    model = load_model(DEFAULT)
    # (each alone stays below 60: email 10 clicks ~27.6, web 19 form submits ~34.5)
    known = [ev(n, "user", T0 + n * 1000, "email.click") for n in range(50, 60)]
    anon = [ev(n, "anon", T0 + n * 60_000, "web.form_submit") for n in range(1, 20)]
    k, a = states(model, known, anon)
    for alone in (k, a):
        assert evaluate(alone, alone.clock_ms, model.compiled).stage == "nurture"
    result = merged(model, known, anon)
    assert [(t.reason, t.from_stage, t.to_stage) for t in result.transitions] == [
        ("merge", "nurture", "purchase")
    ]
    assert result.transitions[0].cause_event_id == "m"
    assert result.at_ms == T0 + 19 * 60_000
    assert result.index is not None
    assert result.index >= 60


def test_the_replay_reads_identity_records_as_their_own_envelope() -> None:
    model = load_model(DEFAULT)
    lines = [
        json.dumps({"event_id": f"p{n}", "tenant": "acme", "contact_id": "anon",
                    "type": "web.page_view", "timestamp": f"2026-11-01T10:0{n}:00Z"})
        for n in range(5)
    ]  # fmt: skip
    link = {"kind": "identify", "event_id": "i1", "tenant": "acme", "contact_id": "user",
            "anonymous_id": "anon", "timestamp": "2026-11-01T10:06:00Z"}  # fmt: skip
    after = json.dumps({"event_id": "p9", "tenant": "acme", "contact_id": "anon",
                        "type": "web.page_view", "timestamp": "2026-11-01T10:09:00Z"})  # fmt: skip
    replayer = Replayer(model, blocked_ids=["guest"])
    for line in [*lines, json.dumps(link), after]:
        replayer.feed(line)
    renamed = Replayer(model)
    for line in [*lines, after]:
        renamed.feed(line.replace('"anon"', '"user"'))
    assert set(replayer.states) == {("acme", "user")}
    assert replayer.states[("acme", "user")].values == renamed.states[("acme", "user")].values
    assert replayer.stats.merges == 1
    assert replayer.identities.aliases == {("acme", "user"): ["anon"]}
    for bad, failure in (
        ({**link, "anonymous_id": "Guest"}, FailureType.IDENTITY_REFUSED),
        ({**link, "contact_id": "other", "anonymous_id": "anon"}, FailureType.IDENTITY_REFUSED),
        ({"kind": "identify", "tenant": "acme"}, FailureType.SCHEMA_VIOLATION),
    ):
        replayer.feed(json.dumps(bad))
        assert replayer.rejects[-1].failure == failure
    replayer.feed(json.dumps({**link, "kind": "group", "account_id": "acct"}))
    assert len(replayer.rejects) == 3


def test_capped_windows_unite_when_both_ids_hold_them_and_count_apart_otherwise() -> None:
    """docs/scoring.md#identity-merge, caps: demo-journey counts one product.login per 10 s
    window (product: half-life 60 s, saturation 20); the expected sums are computed by hand
    from that rule and compared as the component score ``100 · D / (D + 20)``."""
    model = load_model(ROOT / "config" / "models" / "demo-journey.yaml")
    login = "product.login"

    def product(known: list[Any], anon: list[Any]) -> float:
        result = merged(model, known, anon)
        assert result.state is not None
        score = evaluate(result.state, result.at_ms, model.compiled).components["product"]
        return float(20 * score / (100 - score))  # the decayed sum D behind the score

    def decayed(age_ms: int) -> float:
        return float(2.0 ** (-age_ms / 60_000))

    # one window held by both: united, n = 2 > N = 1, each login counts half
    both = product([ev(1, "user", T0, login)], [ev(2, "anon", T0 + 5_000, login)])
    assert both == pytest.approx((decayed(5_000) + 1.0) / 2, abs=1e-12)
    # (1) a late login of the window before: its own id counted it, so the merge does
    late = product(
        [ev(1, "user", T0, login), ev(3, "user", T0 - 1, login)],
        [ev(2, "anon", T0 + 12_000, login)],
    )
    assert late == pytest.approx(decayed(12_000) + decayed(12_001) + 1.0, abs=1e-12)
    # (2) the known id left its window behind (two later ones): the shares stay apart
    apart = product(
        [ev(1, "user", T0, login), ev(3, "user", T0 + 10_000, login),
         ev(4, "user", T0 + 20_000, login)],
        [ev(2, "anon", T0 + 5_000, login)],
    )  # fmt: skip
    expected = decayed(20_000) + decayed(15_000) + decayed(10_000) + 1.0
    assert apart == pytest.approx(expected, abs=1e-12)
