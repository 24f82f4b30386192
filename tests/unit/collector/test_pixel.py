"""Pixel URL signing and verification."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

import pytest

from engagement_index.collector.pixel import GIF, PixelInvalid, sign_pixel_url, verify_pixel

SECRETS = {"acme": "s3cret", "globex": "other"}


def params(url: str) -> list[tuple[str, str]]:
    return parse_qsl(urlsplit(url).query, keep_blank_values=True)


def test_gif_is_a_1x1_gif() -> None:
    assert GIF.startswith(b"GIF89a\x01\x00\x01\x00")
    assert GIF.endswith(b";")


def test_signed_url_verifies() -> None:
    url = sign_pixel_url(
        "https://c.example/",
        "s3cret",
        tenant="acme",
        contact_id="c 42/é",
        event_type="web.page_view",
        event_id="e1",
        account_id="acct",
        expires=2_000,
        properties={"campaign": "a&b=c"},
    )
    assert url.startswith("https://c.example/p.gif?")
    hit = verify_pixel(params(url), SECRETS, now_s=1_000)
    assert (hit.tenant, hit.contact_id, hit.event_type) == ("acme", "c 42/é", "web.page_view")
    assert (hit.event_id, hit.account_id) == ("e1", "acct")
    assert hit.properties == {"campaign": "a&b=c"}


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda p: [(k, "c-2" if k == "c" else v) for k, v in p], "bad_signature"),
        (lambda p: [(k, "globex" if k == "t" else v) for k, v in p], "bad_signature"),
        (lambda p: [*p, ("p.extra", "1")], "bad_signature"),
        (lambda p: [(k, v) for k, v in p if k != "e"], "bad_signature"),
        (lambda p: [(k, v) for k, v in p if k != "sig"], "missing"),
        (lambda p: [(k, "nobody" if k == "t" else v) for k, v in p], "unknown_tenant"),
        (lambda p: [*p, ("c", "again")], "malformed"),
        (lambda p: [*p, ("zzz", "1")], "malformed"),
    ],
)
def test_tampered_urls_are_refused(mutate: object, reason: str) -> None:
    url = sign_pixel_url("http://x", "s3cret", tenant="acme", contact_id="c-1")
    with pytest.raises(PixelInvalid) as caught:
        verify_pixel(mutate(params(url)), SECRETS, now_s=0)  # type: ignore[operator]
    assert caught.value.reason == reason


def test_expired_url_is_refused() -> None:
    url = sign_pixel_url("http://x", "s3cret", tenant="acme", contact_id="c", expires=100)
    verify_pixel(params(url), SECRETS, now_s=100)
    with pytest.raises(PixelInvalid) as caught:
        verify_pixel(params(url), SECRETS, now_s=101)
    assert caught.value.reason == "expired"


def test_property_names_are_checked() -> None:
    with pytest.raises(ValueError, match="property name"):
        sign_pixel_url("http://x", "s", tenant="a", contact_id="c", properties={"a b": "1"})
