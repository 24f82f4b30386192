"""Opens no person made: SendGrid's flag, proxy user agents, opens right after delivery."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from engagement_index.collector.machine import machine_open_signal, proxy_signal
from engagement_index.collector.pixel import sign_pixel_url, verify_pixel
from engagement_index.collector.webhooks import map_mailgun, map_sendgrid, parse_mailgun
from engagement_index.core.events import parse_event

APPLE_MPP = "Mozilla/5.0"
GMAIL = "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"
YAHOO = "YahooMailProxy; https://help.yahoo.com/kb/yahoo-mail-proxy-SLN28749.html"
PERSON = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Mobile/15E148"
)


@pytest.mark.parametrize(
    ("agent", "signal"),
    [
        (APPLE_MPP, "apple_mail_privacy_protection"),
        (" Mozilla/5.0 ", "apple_mail_privacy_protection"),
        (GMAIL, "google_image_proxy"),
        (YAHOO, "yahoo_mail_proxy"),
        (PERSON, None),
        ("Mozilla/5.0 (Windows NT 10.0; Win64; x64)", None),
        (None, None),
        (42, None),
    ],
)
def test_proxy_user_agents(agent: object, signal: str | None) -> None:
    assert proxy_signal(agent) == signal


def test_machine_open_signal_order_and_window() -> None:
    assert machine_open_signal(provider_flag=True, user_agent=GMAIL) == "sg_machine_open"
    assert machine_open_signal(user_agent=GMAIL, opened_at=5, delivered_at=0) == (
        "google_image_proxy"
    )
    assert machine_open_signal(opened_at=110, delivered_at=100, window_s=10) == (
        "soon_after_delivery"
    )
    assert machine_open_signal(opened_at=111, delivered_at=100, window_s=10) is None
    assert machine_open_signal(opened_at=111, delivered_at=None) is None
    assert machine_open_signal(user_agent=PERSON) is None


def sg(event: str, ts: int, **extra: Any) -> dict[str, Any]:
    return {"email": "a@example.com", "timestamp": ts, "event": event, **extra}


def test_sendgrid_machine_opens_become_email_machine_open() -> None:
    payload = [
        sg("delivered", 1000, sg_message_id="m1", sg_event_id="d1"),
        sg("open", 1003, sg_message_id="m1", sg_event_id="o1", useragent=PERSON),  # 3 s after
        sg("open", 5000, sg_message_id="m1", sg_event_id="o2", sg_machine_open=True),
        sg("open", 5000, sg_message_id="m2", sg_event_id="o3", useragent=APPLE_MPP),
        sg("open", 5000, sg_message_id="m2", sg_event_id="o4", useragent=GMAIL),
        sg("open", 5000, sg_message_id="m1", sg_event_id="o5", useragent=PERSON),
        sg("open", 5000, sg_message_id="m2", sg_event_id="o6", sg_machine_open=False),
        sg("click", 1001, sg_message_id="m1", sg_event_id="c1", useragent=APPLE_MPP),
    ]
    signals: list[str] = []
    records, ignored = map_sendgrid(
        payload, tenant="acme", contact_field="contact_id", machine_opens=signals
    )
    assert ignored == 0
    events = {e.event_id: e for e in (parse_event(r.value) for r in records)}
    machine = {
        "o1": "soon_after_delivery",
        "o2": "sg_machine_open",
        "o3": "apple_mail_privacy_protection",
        "o4": "google_image_proxy",
    }
    for event_id, signal in machine.items():
        assert events[event_id].type == "email.machine_open", event_id
        assert (events[event_id].properties or {})["machine_open"] == signal
    for event_id in ("o5", "o6"):
        assert events[event_id].type == "email.open"
        assert "machine_open" not in (events[event_id].properties or {})
    assert events["c1"].type == "email.click"  # only opens are judged
    assert events["d1"].type == "email.sent"
    assert signals == list(machine.values())
    # the user agent is read, never kept
    assert all("useragent" not in (e.properties or {}) for e in events.values())


def test_sendgrid_window_is_a_setting() -> None:
    payload = [
        sg("delivered", 1000, sg_message_id="m1", sg_event_id="d1"),
        sg("open", 1030, sg_message_id="m1", sg_event_id="o1"),
    ]
    for window, expected in ((10, "email.open"), (60, "email.machine_open")):
        records, _ = map_sendgrid(
            payload, tenant="acme", contact_field="contact_id", machine_open_window_s=window
        )
        assert parse_event(records[1].value).type == expected


def test_mailgun_proxy_open_is_a_machine_open() -> None:
    def opened(agent: str) -> Any:
        return parse_mailgun(
            {
                "signature": {"timestamp": "1", "token": "t", "signature": "s"},
                "event-data": {
                    "event": "opened",
                    "id": "mg-1",
                    "timestamp": 1521472262.9,
                    "recipient": "b@x.org",
                    "client-info": {"client-type": "browser", "user-agent": agent},
                },
            }
        )

    signals: list[str] = []
    (machine,) = map_mailgun(
        opened(APPLE_MPP), tenant="t", contact_field="contact_id", machine_opens=signals
    )
    event = parse_event(machine.value)
    assert event.type == "email.machine_open"
    assert (event.properties or {})["machine_open"] == "apple_mail_privacy_protection"
    assert signals == ["apple_mail_privacy_protection"]
    (person,) = map_mailgun(opened(PERSON), tenant="t", contact_field="contact_id")
    assert parse_event(person.value).type == "email.open"


def test_pixel_send_time_is_signed() -> None:
    url = sign_pixel_url("https://c.example", "s3cret", tenant="acme", contact_id="c", sent_at=1000)
    params = parse_qsl(urlsplit(url).query)
    assert ("s", "1000") in params
    assert verify_pixel(params, {"acme": "s3cret"}, now_s=1005).sent_at == 1000
    forged = [(k, "1" if k == "s" else v) for k, v in params]
    with pytest.raises(Exception, match="signature"):
        verify_pixel(forged, {"acme": "s3cret"}, now_s=1005)
