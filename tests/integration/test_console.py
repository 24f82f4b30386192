"""The web console in a real headless browser (Debian's chromium driven by Playwright), on a
real broker and worker: sign in, the overview's numbers and the lists they link to, a contact
card, a stage change arriving live, CSV export, and a token for another tenant seeing nothing.

One worker serves the whole module. Screenshots go to ``var/console-screenshots/``
(docs/console.md shows two of them).
"""

from __future__ import annotations

import csv
import io
import json
import re
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaProducer
from playwright.sync_api import expect, sync_playwright

from engagement_index.core.events import ContactKey
from engagement_index.core.timestamps import ms_to_rfc3339
from engagement_index.stream.auth import token_digest
from tests.integration.test_worker_faults import wait_until
from tests.kafka_harness import TEST_API_TOKEN, StreamEnv, WorkerProcess

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "var" / "console-screenshots"
CHROMIUM = Path("/usr/bin/chromium")
ACME = "console-acme-token-0123456789"
GLOBEX = "console-globex-token-0123456789"
DAY = 86_400_000
# the default model (four quarters, half-lives of days: nothing decays during the test) with a
# band and a trend lifecycle
MODEL = (ROOT / "config" / "models" / "default.yaml").read_text().replace(
    'version: "default-1"', 'version: "console-1"'
).split("legacy:")[0] + (
    "  band:\n"
    "    bands: {index: contact, levels: {hot: 60, warm: 30, cold: 0}, hysteresis: 5}\n"
    "  trend:\n"
    "    trend: {fast: 7d, slow: 28d, margin: 0.25, hysteresis: 0.15}\n"
)


def event(tenant: str, cid: str, n: int, kind: str, ts: int) -> tuple[str, bytes, bytes]:
    channel = kind.split(".")[0]
    value = {
        "event_id": f"{cid}-e{n}",
        "tenant": tenant,
        "contact_id": cid,
        "type": kind,
        "timestamp": ms_to_rfc3339(ts),
    }
    return channel, ContactKey(tenant, cid).encode(), json.dumps(value).encode()


def traffic(now: int) -> list[tuple[str, bytes, bytes]]:
    """acme: 4 engaged contacts (purchase), 4 quiet ones (nurture), 2 customers (retention),
    each over the last days (so the history has midnights); globex: one contact."""
    out = []
    for i in range(10):
        cid = f"c-{i:02d}"
        n = 0
        for day in (3, 2, 1, 0):
            ts = now - day * DAY - 3_600_000
            kinds = ["web.page_view", "email.open"]
            if i < 4:
                kinds += ["web.form_submit", "email.click", "email.click", "web.form_submit"] * 2
            for kind in kinds:
                out.append(event("acme", cid, n, kind, ts + n))
                n += 1
        if i >= 8:
            out.append(event("acme", cid, n, "commerce.purchase", now - 600_000))
    out.append(event("globex", "g-1", 0, "web.page_view", now - 60_000))
    return out


class Site:
    def __init__(self, env: StreamEnv, worker: WorkerProcess, producer: KafkaProducer) -> None:
        self.env = env
        self.worker = worker
        self.producer = producer

    def publish(self, records: list[tuple[str, bytes, bytes]]) -> None:
        for channel, key, value in records:
            self.producer.send(self.env.topic(channel), key=key, value=value)
        self.producer.flush()

    def api(self, path: str, token: str = ACME) -> Any:
        status, body = self.worker.get(path, token=token)
        assert status == 200, (path, status, body)
        return body


@pytest.fixture(scope="module")
def site(bootstrap_servers: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("console")
    env = StreamEnv(bootstrap_servers, tmp, f"console-{time.time_ns() % 10**9}", MODEL, 2)
    tokens = {
        token_digest(TEST_API_TOKEN): ["*"],
        token_digest(ACME): ["acme"],
        token_digest(GLOBEX): ["globex"],
    }
    worker = env.worker(extra_env={"ENGAGEMENT_INDEX_API_TOKENS": json.dumps(tokens)})
    producer = KafkaProducer(bootstrap_servers=bootstrap_servers, acks="all", linger_ms=5)
    now = int(time.time() * 1000)
    records = traffic(now)
    site = Site(env, worker, producer)
    site.publish(records)
    worker.start()
    counts: dict[tuple[str, str], int] = {}
    for _, _, value in records:
        body = json.loads(value)
        key = (body["tenant"], body["contact_id"])
        counts[key] = counts.get(key, 0) + 1

    def scored() -> bool:
        for (tenant, cid), n in counts.items():
            status, body = worker.get(f"/v1/contacts/{tenant}/{cid}")
            if status != 200 or body["events_counted"] != n:
                return False
        return True

    wait_until(scored, 90, "every event to be scored")
    try:
        yield site
    finally:
        producer.close()
        env.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run dev/tools/install.sh (apt-get install chromium)")

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            yield browser
        finally:
            browser.close()


def open_page(browser: Any, site: Site, width: int = 1280, height: int = 900) -> Any:
    context = browser.new_context(viewport={"width": width, "height": height})
    page = context.new_page()
    page.set_default_timeout(15_000)
    page.on("pageerror", lambda exc: print(f"page error: {exc}"))
    page.on("console", lambda msg: print(f"console: {msg.text}"))
    page.goto(f"{site.worker.url}/console")
    return page


def sign_in(page: Any, tenant: str, token: str) -> None:
    """With the keyboard only: the tenant field has the focus, Tab, Enter."""
    page.wait_for_selector("form.signin")
    page.keyboard.type(tenant)
    page.keyboard.press("Tab")
    page.keyboard.type(token)
    page.keyboard.press("Enter")


def test_sign_in_overview_and_a_number_to_its_list(browser: Any, site: Site) -> None:
    page = open_page(browser, site)
    sign_in(page, "acme", ACME)
    page.wait_for_selector("table[data-lifecycle=stage]")
    summary = site.api("/v1/tenants/acme/summary")
    # every count of every lifecycle is the summary's, and links to its list
    for lifecycle, stages in summary["lifecycles"].items():
        table = page.locator(f"table[data-lifecycle={lifecycle}]")
        for stage, n in stages.items():
            row = table.locator("tbody tr", has=page.locator("th", has_text=stage))
            assert row.locator("td.num").inner_text() == str(n), (lifecycle, stage)
    assert page.locator("#total").inner_text() == str(summary["contacts"]) == "10"
    assert summary["lifecycles"]["stage"] == {
        "nurture": 4,
        "purchase": 4,
        "retention": 2,
        "exit": 0,
    }
    # flows of the last 24 h: first entries into the stages
    assert page.locator("table[data-flows=stage]").inner_text().count("4") >= 1
    page.wait_for_selector("#live.on")
    page.screenshot(path=str(SHOTS / "overview-signed-in.png"), full_page=True)
    # a phone: one column, nothing wider than the screen
    page.set_viewport_size({"width": 390, "height": 844})
    page.wait_for_timeout(300)
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
    page.screenshot(path=str(SHOTS / "overview-phone.png"), full_page=True)
    page.set_viewport_size({"width": 1280, "height": 900})

    page.locator("table[data-lifecycle=stage] a", has_text="4").first.click()
    page.wait_for_selector("#contact-list")
    assert "stage=stage%3Anurture" in page.url
    listed = page.locator("#contact-list tbody tr td:first-child").all_inner_texts()
    api = site.api("/v1/tenants/acme/contacts?stage=nurture")
    assert listed == [item["contact_id"] for item in api["items"]]
    assert len(listed) == 4
    page.screenshot(path=str(SHOTS / "list.png"), full_page=True)

    # export: the whole segment as CSV
    with page.expect_download() as download:
        page.click("#export")
    rows = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
    assert [r["contact_id"] for r in rows] == listed
    assert {r["stage"] for r in rows} == {"nurture"}
    page.context.close()


def test_the_list_filters_sorts_and_pages(browser: Any, site: Site) -> None:
    page = open_page(browser, site)
    sign_in(page, "acme", ACME)
    page.wait_for_selector("table[data-lifecycle=stage]")
    page.goto(f"{site.worker.url}/console#/contacts?sort=-index&limit=25")
    page.wait_for_selector("#contact-list")
    page.select_option("select[name=limit]", "25")
    page.select_option("select[name='lc:stage']", "purchase")
    page.fill("input[name=min_index]", "1")
    page.select_option("select[name=sort]", "-index")
    page.click("form.filters button[type=submit]")
    page.wait_for_url("**min_index=1**")
    expect(page.locator("#contact-list caption")).to_contain_text("4 contacts on this page")
    unlabelled = page.evaluate(
        "() => [...document.querySelectorAll('input, select')]"
        ".filter((el) => !el.closest('label')).length"
    )
    assert unlabelled == 0
    api = site.api("/v1/tenants/acme/contacts?stage=purchase&min_index=1&sort=-index&limit=25")
    listed = page.locator("#contact-list tbody tr td:first-child").all_inner_texts()
    assert listed == [item["contact_id"] for item in api["items"]]
    # paging: 3 per page through the 10 contacts, each once
    page.goto(f"{site.worker.url}/console#/contacts?limit=3")
    expect(page.locator("#contact-list caption")).to_contain_text("3 contacts on this page")
    seen: list[str] = []
    for _ in range(4):
        first = page.locator("#contact-list tbody tr td:first-child").first
        expect(first).to_be_visible()
        seen += page.locator("#contact-list tbody tr td:first-child").all_inner_texts()
        nxt = page.get_by_role("button", name="Next page")
        if nxt.is_disabled():
            break
        before = first.inner_text()
        nxt.click()
        expect(page.locator("#contact-list tbody tr td:first-child").first).not_to_have_text(before)
    assert seen == [f"c-{i:02d}" for i in range(10)]
    page.context.close()


def test_contact_card_and_a_stage_change_arriving_live(browser: Any, site: Site) -> None:
    page = open_page(browser, site)
    sign_in(page, "acme", ACME)
    page.wait_for_selector("table[data-lifecycle=stage]")
    page.locator("table[data-lifecycle=stage] a").first.click()  # nurture
    page.wait_for_selector("#contact-list")
    page.locator("#contact-list tbody a", has_text="c-04").click()
    page.wait_for_selector("#dial")
    contact = site.api("/v1/contacts/acme/c-04")
    assert page.locator("#card-stage").inner_text() == "stage: nurture"
    assert (
        page.locator("#card-band").inner_text() == f"band: {contact['lifecycles']['band']['stage']}"
    )
    assert page.locator("#card-trend").inner_text().startswith("trend: ")
    # the dial: the model's thresholds (60/45 before a purchase, 35/25 after), the four stages
    dial = page.locator("#dial")
    labels = dial.locator("text").all_text_contents()
    for text in ("60", "45", "35", "25", "nurture", "purchase", "retention", "exit"):
        assert text in labels, text
    assert dial.locator("#needle").count() == 1
    assert f"Index {contact['index']:.1f}" in dial.locator("title").first.text_content()
    # component bars with the weights of the contact's index
    rows = page.locator("#components tbody tr")
    assert rows.count() == 5
    assert "0.40" in page.locator("#components tbody tr", has_text="web").inner_text()
    # the history chart has the midnights; the transitions table the first entry
    history = site.api("/v1/contacts/acme/c-04/history")
    assert len(history["points"]) >= 3
    assert page.locator("#history-chart circle").count() >= len(history["points"])
    assert "first_seen" in page.locator("#transitions").inner_text()
    page.wait_for_selector("#live.on")
    # every chart is an image with a title and a description; every control has a label
    unlabelled = page.evaluate(
        """() => [...document.querySelectorAll('svg[role=img]')].filter((svg) => {
              const ids = (svg.getAttribute('aria-labelledby') || '').split(' ');
              return ids.length < 2 || ids.some((id) => !document.getElementById(id)?.textContent);
           }).length"""
    )
    assert unlabelled == 0
    assert page.locator("svg[role=img]").count() == 2  # the dial and the history
    page.evaluate("window.__notReloaded = true")

    overview = open_page(browser, site)
    sign_in(overview, "acme", ACME)
    overview.wait_for_selector("#live.on")

    now = int(time.time() * 1000)
    site.publish([event("acme", "c-04", 99, "commerce.purchase", now)])
    page.wait_for_selector("#card-stage:has-text('stage: retention')", timeout=30_000)
    assert page.evaluate("window.__notReloaded === true && window.__consoleLoads === 1")
    assert "nurture → retention" in page.locator("#live-note").inner_text()
    # the last transitions: the reason and the causing event of each
    purchased = page.locator("#transitions tbody tr", has_text="nurture → retention")
    assert "customer_event" in purchased.inner_text()
    assert "c-04-e99" in purchased.inner_text()
    page.screenshot(path=str(SHOTS / "contact-card.png"), full_page=True)
    # ... and on the overview: the feed and the counts
    overview.wait_for_selector("#feed li:has-text('c-04')", timeout=30_000)
    retention = overview.locator("table[data-lifecycle=stage] tbody tr", has_text="retention")
    expect(retention.locator("td.num")).to_have_text("3", timeout=30_000)
    caption = overview.locator("#rate-chart figcaption")
    expect(caption).not_to_have_text(re.compile(r"^0 in the last hour"))
    overview.screenshot(path=str(SHOTS / "overview.png"), full_page=True)
    rates = site.api("/v1/tenants/acme/transitions/per-minute")
    assert sum(m["count"] for m in rates["minutes"]) >= 1
    # a phone: nothing wider than the screen
    page.set_viewport_size({"width": 390, "height": 844})
    page.wait_for_timeout(300)
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
    page.screenshot(path=str(SHOTS / "contact-card-phone.png"), full_page=True)
    overview.context.close()
    page.context.close()


def test_a_token_for_another_tenant_sees_nothing(browser: Any, site: Site) -> None:
    page = open_page(browser, site)
    sign_in(page, "acme", GLOBEX)
    page.wait_for_selector("#signin-error:has-text('cannot read tenant')")
    assert "c-0" not in page.content()
    # signed in for its own tenant: globex's one contact, nothing of acme
    page.fill("#tenant", "globex")
    page.fill("#token", GLOBEX)
    page.press("#token", "Enter")
    page.wait_for_selector("#total")
    assert page.locator("#total").inner_text() == "1"
    page.goto(f"{site.worker.url}/console#/contacts")
    page.wait_for_selector("#contact-list")
    assert page.locator("#contact-list tbody tr td:first-child").all_inner_texts() == ["g-1"]
    page.goto(f"{site.worker.url}/console#/contact/c-04")
    page.wait_for_selector("#not-found")
    assert "acme" not in page.locator("main").inner_text()
    page.screenshot(path=str(SHOTS / "other-tenant.png"))
    # the endpoints the console added keep tenants apart like the rest of the API
    for path in ("model", "transitions/per-minute", "stage-changes"):
        request = urllib.request.Request(
            f"{site.worker.url}/v1/tenants/acme/{path}",
            headers={"Authorization": f"Bearer {GLOBEX}"},
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=5)
        refused.value.close()
        assert refused.value.code == 404, path
    status, _ = site.worker.get("/v1/tenants/acme/model", token=None)
    assert status == 401
    status, _ = site.worker.get("/v1/tenants/no%20such/model")  # a token for every tenant
    assert status == 400
    page.context.close()
