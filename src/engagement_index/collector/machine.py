"""Email opens that no person made: privacy proxies, prefetchers, link scanners.

An open is taken as machine-made when one of these signals is present (the first that matches
is the signal named):

- ``sg_machine_open``: SendGrid says so (``"sg_machine_open": true`` on an ``open`` event);
- a known proxy user agent: ``apple_mail_privacy_protection`` (Apple's proxy fetches with the
  bare user agent ``Mozilla/5.0`` and pre-fetches every image of every message),
  ``google_image_proxy`` (``GoogleImageProxy``), ``yahoo_mail_proxy`` (``YahooMailProxy``);
- ``soon_after_delivery``: the open came at most ``machine_open_window_seconds`` after the
  message was delivered (SendGrid: a ``delivered`` event for the same ``sg_message_id`` in the
  same POST) or sent (a pixel URL signed with its send time ``s``), when that time is known.

Such an open is published as ``email.machine_open`` (not ``email.open``) with the property
``machine_open`` naming the signal, so the model decides what it is worth (0 points in the
shipped models). A ``HEAD`` request on the pixel is never an open: it publishes nothing.
"""

from __future__ import annotations

import re

MACHINE_OPEN = "email.machine_open"
OPEN = "email.open"

#: (pattern over the User-Agent header, signal)
PROXY_USER_AGENTS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"^\s*Mozilla/5\.0\s*$"), "apple_mail_privacy_protection"),
    (re.compile(r"GoogleImageProxy"), "google_image_proxy"),
    (re.compile(r"YahooMailProxy"), "yahoo_mail_proxy"),
)


def proxy_signal(user_agent: object) -> str | None:
    """The signal of a known image-proxy user agent, None for any other (or none)."""
    if not isinstance(user_agent, str):
        return None
    for pattern, signal in PROXY_USER_AGENTS:
        if pattern.search(user_agent):
            return signal
    return None


def machine_open_signal(
    *,
    user_agent: object = None,
    opened_at: float | None = None,
    delivered_at: float | None = None,
    window_s: float = 10.0,
    provider_flag: bool = False,
) -> str | None:
    """Why an open looks machine-made (a signal name), or None if it looks like a person's."""
    if provider_flag:
        return "sg_machine_open"
    proxy = proxy_signal(user_agent)
    if proxy is not None:
        return proxy
    if opened_at is not None and delivered_at is not None and opened_at - delivered_at <= window_s:
        return "soon_after_delivery"
    return None
