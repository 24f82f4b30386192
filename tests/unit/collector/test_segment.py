"""Segment calls -> canonical events and identity records; the event map file."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from engagement_index.collector.errors import RequestRejected
from engagement_index.collector.models import SegmentMessage
from engagement_index.collector.segment import (
    EventMap,
    load_event_map,
    map_message,
    slugify,
)
from engagement_index.core.events import parse_event
from engagement_index.core.model import EVENT_TYPE_PATTERN
from engagement_index.errors import ConfigError

REPO = Path(__file__).resolve().parents[3]
EVENT_MAP = load_event_map(REPO / "config" / "collector" / "segment-events.yaml")
RECEIVED = datetime(2026, 11, 1, 12, 0, 0, tzinfo=UTC)


def mapped(raw: dict[str, Any], **kwargs: Any) -> tuple[str, dict[str, Any]]:
    out = map_message(
        SegmentMessage.model_validate(raw),
        raw,
        tenant="acme",
        event_map=EVENT_MAP,
        received=RECEIVED,
        **kwargs,
    )
    return out.channel, json.loads(out.value)


@pytest.mark.parametrize(
    ("name", "event_type"),
    [
        ("Order Completed", "commerce.purchase"),
        ("order   completed", "commerce.purchase"),
        ("Product Added", "commerce.cart_add"),
        ("Email Opened", "email.open"),
        ("Email Link Clicked", "email.click"),
        ("Unsubscribed", "email.unsubscribe"),
        ("Signed Up", "custom.signed_up"),
        ("Plan: Upgraded (Pro)!", "custom.plan_upgraded_pro-cc7a203be2c7"),
        ("Café Visité", "custom.cafe_visite-31bbba0f67b9"),
        ("登録完了", "custom.x-69cccc070343"),
    ],
)
def test_track_names_map_to_types(name: str, event_type: str) -> None:
    channel, event = mapped({"type": "track", "userId": "u1", "event": name, "messageId": "m"})
    assert event["type"] == event_type
    assert channel == ("web" if event_type.startswith("custom.") else event_type.split(".")[0])
    assert event["properties"]["event_name"] == name


def test_track_event_is_a_valid_canonical_record_keyed_by_contact() -> None:
    raw = {
        "type": "track",
        "userId": 42,
        "anonymousId": "a-1",
        "event": "Order Completed",
        "messageId": "msg-1",
        "timestamp": "2026-10-31T23:00:00.123456+01:00",
        "context": {"groupId": "acct-7"},
        "properties": {"revenue": 9.5},
    }
    out = map_message(
        SegmentMessage.model_validate(raw),
        raw,
        tenant="acme",
        event_map=EVENT_MAP,
        received=RECEIVED,
    )
    event = parse_event(out.value)
    assert (event.event_id, event.contact_id, event.account_id) == ("msg-1", "42", "acct-7")
    assert event.timestamp == datetime(2026, 10, 31, 22, 0, 0, 123456, UTC)
    assert out.key == b"acme\x1f42"


def test_original_timestamp_is_corrected_for_clock_skew() -> None:
    # device clock 1 h fast: sent "13:00:10" for an event at "13:00:00", received 12:00:00 UTC
    raw = {
        "type": "page",
        "anonymousId": "a",
        "messageId": "m",
        "originalTimestamp": "2026-11-01T13:00:00Z",
    }
    _, event = mapped(raw, batch_sent_at="2026-11-01T13:00:10Z")
    assert event["timestamp"] == "2026-11-01T11:59:50Z"
    assert event["type"] == "web.page_view"
    _, plain = mapped({"type": "page", "anonymousId": "a", "messageId": "m"})
    assert plain["timestamp"] == "2026-11-01T12:00:00Z"


def test_a_skew_correction_out_of_range_is_a_400_naming_the_field() -> None:
    # found by the fuzzer: sentAt far after originalTimestamp used to raise OverflowError (500)
    raw = {
        "type": "page",
        "anonymousId": "a",
        "messageId": "m",
        "originalTimestamp": "0001-01-01T00:00:00Z",
    }
    with pytest.raises(RequestRejected) as err:
        mapped(raw, batch_sent_at="9999-12-31T23:59:59Z")
    assert err.value.status == 400
    assert err.value.field == "originalTimestamp"


def test_missing_message_id_is_derived_deterministically() -> None:
    raw = {"type": "track", "userId": "u", "event": "X", "timestamp": "2026-01-01T00:00:00Z"}
    first, second = mapped(raw)[1], mapped(dict(raw))[1]
    assert first["event_id"] == second["event_id"]
    assert first["event_id"].startswith("seg-")
    assert mapped({**raw, "event": "Y"})[1]["event_id"] != first["event_id"]


def test_identify_traits_are_read_from_context_traits_too() -> None:
    # the RudderStack Python SDK sends identify traits only as context.traits
    _, rudder = mapped(
        {
            "type": "identify",
            "userId": "u",
            "messageId": "m",
            "context": {"traits": {"plan": "pro", "email": "a@example.test"}, "library": {}},
        }
    )
    assert rudder["traits"] == {"plan": "pro", "email": "a@example.test"}
    # Segment's SDK sends them top level; both: the top-level value wins a conflict
    _, both = mapped(
        {
            "type": "identify",
            "userId": "u",
            "messageId": "m",
            "traits": {"plan": "enterprise"},
            "context": {"traits": {"plan": "pro", "seats": 3}},
        }
    )
    assert both["traits"] == {"plan": "enterprise", "seats": 3}
    # a group's traits are the group's: the user's context.traits are not taken for them
    _, group = mapped(
        {
            "type": "group",
            "userId": "u",
            "groupId": "g",
            "messageId": "m",
            "context": {"traits": {"plan": "pro"}},
        }
    )
    assert "properties" not in group


def test_a_group_call_is_an_account_group_event_with_the_group_traits() -> None:
    channel, event = mapped(
        {
            "type": "group",
            "userId": "u",
            "groupId": 7,
            "messageId": "m",
            "timestamp": "2026-11-01T10:00:00Z",
            "traits": {"licences": 10, "plan": "pro"},
        }
    )
    assert channel == EVENT_MAP.custom_channel
    assert event == {
        "event_id": "m",
        "tenant": "acme",
        "contact_id": "u",
        "type": "account.group",
        "timestamp": "2026-11-01T10:00:00Z",
        "account_id": "7",
        "properties": {"licences": 10, "plan": "pro"},
    }


def test_identify_and_alias_go_to_the_identity_topic() -> None:
    channel, record = mapped(
        {"type": "identify", "userId": "u", "anonymousId": "a", "messageId": "m", "traits": {}}
    )
    assert channel == "identity"
    assert (record["kind"], record["contact_id"], record["anonymous_id"]) == ("identify", "u", "a")
    _, alias = mapped({"type": "alias", "userId": "u", "previousId": "a", "messageId": "m"})
    assert (alias["kind"], alias["previous_id"]) == ("alias", "a")


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"type": "track", "event": "x"}, "batch[0].userId"),
        ({"type": "track", "userId": "u"}, "batch[0].event"),
        ({"type": "track", "userId": "u", "event": "!!!"}, "batch[0].event"),
        ({"type": "alias", "userId": "u"}, "batch[0].previousId"),
        ({"type": "group", "userId": "u"}, "batch[0].groupId"),
        ({"userId": "u", "event": "x"}, "batch[0].type"),
        ({"type": "page", "userId": "u", "timestamp": "2026-01-01T00:00:00"}, "batch[0].timestamp"),
        ({"type": "page", "userId": "u", "context": {"groupId": []}}, "batch[0].context.groupId"),
    ],
)
def test_invalid_messages_name_the_field(raw: dict[str, Any], field: str) -> None:
    with pytest.raises(RequestRejected) as caught:
        mapped(raw, where="batch[0].")
    assert caught.value.status == 400
    assert caught.value.field == field


def test_slugify() -> None:
    assert slugify("Signed Up") == "signed_up"
    assert slugify("  ") == ""
    assert slugify("!!! ???") == ""
    assert len(slugify("x" * 300)) == 64


@pytest.mark.parametrize(
    "name",
    ["登録完了", "Регистрация", "تسجيل", "ثبت‌نام", "٣", "Ωmega", "ñ"],
)
def test_a_name_with_letters_or_digits_in_any_script_gets_a_type(name: str) -> None:
    slug = slugify(name)
    assert slug, name
    assert re.fullmatch(EVENT_TYPE_PATTERN, f"custom.{slug}")
    assert EVENT_MAP.track_type(name) == f"custom.{slug}"


def test_slugs_are_the_same_for_the_same_name_and_differ_otherwise() -> None:
    same = ["Café Visité", "café  visité", "CAFÉ VISITÉ", "Cafe\u0301 Visite\u0301"]
    assert len({slugify(name) for name in same}) == 1
    names = [
        "Cafe Visite",
        "Café Visité",
        "Cafe_Visite",
        "cafe-visite",
        "Café: Visité!",
        "cafe visite 31bbba0f67b9",
        "登録完了",
        "登録",
        "Регистрация",
        "Регистрация!",
        "x" * 80,
        "x" * 81,
        "Straße",
        "Strasse ",
    ]
    slugs = [slugify(name) for name in names]
    # every name but the last (the same as "Straße" once case-folded) has its own slug
    assert len(set(slugs[:-1])) == len(names) - 1, dict(zip(names, slugs, strict=True))
    assert slugs[-1] == slugs[-2] == "strasse"


def test_plain_slugs_and_hashed_slugs_never_meet() -> None:
    # a plain name is only ASCII letters, digits and spaces: its slug has no "-"; every other
    # name's slug ends in "-" and a hash, so no plain name can take another name's slug
    assert "-" not in slugify("cafe visite 31bbba0f67b9")
    assert slugify("Café Visité").rsplit("-", 1)[1] == "31bbba0f67b9"
    assert slugify("Cafe Visite") == "cafe_visite"


def test_event_map_rejects_unknown_keys_bad_channels_and_collisions(tmp_path: Path) -> None:
    path = tmp_path / "map.yaml"
    path.write_text("version: 1\ntrack: {A: support.ticket}\n")
    with pytest.raises(ConfigError, match="channel"):
        load_event_map(path)
    path.write_text("version: 1\nextra: 1\n")
    with pytest.raises(ConfigError, match="extra"):
        load_event_map(path)
    path.write_text(
        "version: 1\ntrack: {'Order  Completed': commerce.purchase, 'order completed': web.x}\n"
    )
    with pytest.raises(ConfigError, match="same name"):
        load_event_map(path)
    assert EventMap(version=1).track_type("anything") == "custom.anything"
