"""Output records: the fast JSON writer gives pydantic's bytes exactly."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from engagement_index.core.records import ContactSnapshot, StageStatus, Transition

_floats = st.floats(allow_nan=False, allow_infinity=False)
_text = st.text(st.characters(blacklist_categories=["Cs"]), max_size=40)
_AT = "2026-11-01T10:00:00.000Z"


def _transition(
    index: float, previous: float, comps: dict[str, float], who: str, rule_id: str | None = "r"
) -> Transition:
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
        occurred_at=_AT,
        model_version="default-1",
        lifecycle=who or "stage",
        rule_id=rule_id,
    )


def test_the_trusted_fields_are_all_the_fields() -> None:
    record = _transition(1.0, 0.0, {}, "c")
    assert tuple(record.__dict__) == tuple(Transition.model_fields)
    assert list(Transition.model_fields)[-2:] == ["lifecycle", "rule_id"]


@given(_floats, _floats, st.dictionaries(_text, _floats, max_size=5), _text, st.none() | _text)
def test_transition_json_is_pydantics(
    index: float, previous: float, comps: dict[str, float], who: str, rule_id: str | None
) -> None:
    record = _transition(index, previous, comps, who, rule_id)
    assert record.to_json_bytes() == record.model_dump_json().encode("utf-8")


_status = st.builds(
    lambda stage, ms: StageStatus(stage=stage, entered_at=_AT, in_stage_ms=ms),
    _text,
    st.integers(min_value=0, max_value=2**53),
)


@given(
    _floats,
    st.integers(min_value=0, max_value=2**40),
    st.booleans(),
    _text,
    st.dictionaries(_text, _status, max_size=3),
    st.dictionaries(_text, st.just(_AT), max_size=3),
)
def test_snapshot_json_is_pydantics(
    index: float,
    count: int,
    customer: bool,
    who: str,
    lifecycles: dict[str, StageStatus],
    markers: dict[str, str],
) -> None:
    record = ContactSnapshot.trusted(
        tenant="acme",
        contact_id=who,
        stage="engaged",
        half="post_purchase",
        index=index,
        components={"email": index, "web": 0.0},
        customer=customer,
        first_seen_at=_AT,
        last_event_at=_AT,
        events_counted=count,
        active_days_7d=1,
        active_days_30d=2,
        active_days_90d=3,
        model_version="default-1",
        evaluated_at=_AT,
        lifecycles=lifecycles,
        markers=markers,
    )
    assert tuple(record.__dict__) == tuple(ContactSnapshot.model_fields)
    assert record.to_json_bytes() == record.model_dump_json().encode("utf-8")


def test_validated_records_take_the_same_path() -> None:
    for rule_id in ("cooled", None):
        trusted = _transition(12.5, 0.0, {"email": 1e-7, "web": 1e22}, "c-1", rule_id)
        validated = Transition.model_validate(trusted.model_dump())
        assert validated.to_json_bytes() == trusted.to_json_bytes()
        assert validated.to_json_bytes() == validated.model_dump_json().encode("utf-8")
