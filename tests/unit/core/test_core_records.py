"""Output records: the fast JSON writer gives pydantic's bytes exactly."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from engagement_index.core.records import ContactSnapshot, Transition

_floats = st.floats(allow_nan=False, allow_infinity=False)
_text = st.text(st.characters(blacklist_categories=["Cs"]), max_size=40)


def _transition(index: float, previous: float, comps: dict[str, float], who: str) -> Transition:
    return Transition.trusted(
        transition_id="ab" * 16,
        tenant="acme",
        contact_id=who,
        from_stage=None,
        to_stage="engaged",
        half="pre_purchase",
        reason="first_seen",
        index=index,
        previous_index=previous,
        components=comps,
        cause_event_id=who or None,
        occurred_at="2026-11-01T10:00:00.000Z",
        model_version="default-1",
    )


@given(_floats, _floats, st.dictionaries(_text, _floats, max_size=5), _text)
def test_transition_json_is_pydantics(
    index: float, previous: float, comps: dict[str, float], who: str
) -> None:
    record = _transition(index, previous, comps, who)
    assert record.to_json_bytes() == record.model_dump_json().encode("utf-8")


@given(_floats, st.integers(min_value=0, max_value=2**40), st.booleans(), _text)
def test_snapshot_json_is_pydantics(index: float, count: int, customer: bool, who: str) -> None:
    record = ContactSnapshot.trusted(
        tenant="acme",
        contact_id=who,
        stage="engaged",
        half="post_purchase",
        index=index,
        components={"email": index, "web": 0.0},
        customer=customer,
        first_seen_at="2026-11-01T10:00:00.000Z",
        last_event_at="2026-11-01T10:00:00.000Z",
        events_counted=count,
        active_days_7d=1,
        active_days_30d=2,
        active_days_90d=3,
        model_version="default-1",
        evaluated_at="2026-11-01T10:00:00.000Z",
    )
    assert record.to_json_bytes() == record.model_dump_json().encode("utf-8")


def test_validated_records_take_the_same_path() -> None:
    trusted = _transition(12.5, 0.0, {"email": 1e-7, "web": 1e22}, "c-1")
    validated = Transition.model_validate(trusted.model_dump())
    assert validated.to_json_bytes() == trusted.to_json_bytes()
    assert validated.to_json_bytes() == validated.model_dump_json().encode("utf-8")
