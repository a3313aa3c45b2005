"""The tracker and the demo shop in headless Chromium, on the running stack: a visitor's views,
clicks and purchases go through track.js, the collector, Kafka and the consumer into
`streaming.user_events`, each once, also when a send fails and is retried with the same event_ids
and when the page is left before the tracker sent anything; the page's utm parameters ride on every
event, and "Sign in" sends an identify event under the anonymous user_id. The shop as a visitor sees
it is saved to artifacts/storefront.png."""

from __future__ import annotations

import time

import pytest

from tests.support.browser import chromium, click, drained, tracker
from tests.support.ephemeral import ARTIFACTS
from tests.support.pipeline_waits import query, wait_for


@pytest.fixture(scope="module")
def shop(env) -> str:
    return f"http://127.0.0.1:{env['COLLECTOR_PORT']}/shop/"


def counts(stack, user_id: int) -> dict[str, int]:
    rows = query(
        stack.owner_dsn(), "SELECT event_type, event_count FROM streaming.user_events WHERE user_id = %s", (user_id,)
    )
    return dict(rows)


def test_a_visitors_views_clicks_and_purchase_land_in_streaming_once(stack, shop):
    with chromium() as driver:
        driver.get(shop)
        wait_for(lambda: driver.execute_script("return !!window.rtAnalytics"), 30, "the tracker to load")
        user_id, _ = tracker(driver)
        click(driver, 2, "view")
        click(driver, 2, "click")
        click(driver, 2, "purchase")
        wait_for(lambda: drained(driver), 30, "the collector to acknowledge every event", interval=0.2)
        time.sleep(0.6)  # the page shows the tracker's queue every 500 ms
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(ARTIFACTS / "storefront.png"))
        # the page view, the product's details, add to cart, buy
        wait_for(
            lambda: counts(stack, user_id) == {"view": 2, "click": 1, "purchase": 1},
            30,
            f"user {user_id}'s events in streaming.user_events (now {counts(stack, user_id)})",
            interval=0.5,
        )
        [(revenue,)] = query(
            stack.owner_dsn(), "SELECT sum(revenue) FROM streaming.sessions WHERE user_id = %s", (user_id,)
        )
        assert float(revenue) == 49.90


def test_a_failed_send_is_retried_with_the_same_event_ids_and_counted_once(stack, shop):
    with chromium() as driver:
        driver.get(shop)
        wait_for(lambda: drained(driver), 30, "the page view to be acknowledged", interval=0.2)
        user_id, _ = tracker(driver)
        # The next two sends reach the collector, but their answers are lost on the way back (as on a
        # flaky network): the tracker cannot know, and sends the same events again.
        driver.execute_script(
            """
            const real = window.fetch;
            window.sentIds = [];
            let lose = 2;
            window.fetch = function (url, init) {
              window.sentIds.push(JSON.parse(init.body).map(e => e.event_id));
              return real(url, init).then(r => { if (lose-- > 0) throw new TypeError('lost'); return r; });
            };
            """
        )
        click(driver, 3, "click")
        wait_for(lambda: drained(driver), 60, "the retried event to be acknowledged", interval=0.2)
        sent = driver.execute_script("return window.sentIds")
        assert len(sent) == 3 and sent[0] == sent[1] == sent[2] and len(sent[0]) == 1, sent
        wait_for(lambda: counts(stack, user_id) == {"view": 1, "click": 1}, 30, "the click, counted once", interval=0.5)
        time.sleep(2)  # no late copy arrives
        assert counts(stack, user_id) == {"view": 1, "click": 1}


def test_events_of_a_page_left_at_once_arrive_once(stack, shop):
    """Clicked, then the page is left before the tracker's batch went out: the beacon sends it,
    and the next page of the tab sends it again from sessionStorage; it counts once."""
    with chromium() as driver:
        driver.get(shop)
        wait_for(lambda: drained(driver), 30, "the page view to be acknowledged", interval=0.2)
        user_id, _ = tracker(driver)
        click(driver, 4, "purchase")
        driver.get(shop)  # left within the tracker's 1 s batching delay
        wait_for(lambda: drained(driver), 30, "the queue of the new page to be acknowledged", interval=0.2)
        assert tracker(driver)[0] == user_id
        wait_for(
            lambda: counts(stack, user_id) == {"view": 2, "purchase": 1},
            30,
            f"the purchase counted once (now {counts(stack, user_id)})",
            interval=0.5,
        )


def test_signing_in_sends_an_identify_event_and_every_event_keeps_the_anonymous_id_and_the_utm(stack, shop):
    from selenium.webdriver.common.by import By

    with chromium() as driver:
        driver.get(shop + "?utm_source=newsletter&utm_medium=email&utm_campaign=spring%20%20sale%0A")
        wait_for(lambda: drained(driver), 30, "the page view to be acknowledged", interval=0.2)
        user_id, _ = tracker(driver)
        driver.execute_script(
            """
            const real = window.fetch;
            window.sentEvents = [];
            window.fetch = function (url, init) {
              window.sentEvents.push(...JSON.parse(init.body));
              return real(url, init);
            };
            """
        )
        driver.find_element(By.ID, "account").send_keys("4242")
        driver.find_element(By.ID, "sign-in").click()
        click(driver, 1, "click")
        wait_for(lambda: drained(driver), 30, "the identify event and the click to be acknowledged", interval=0.2)
        sent = driver.execute_script("return window.sentEvents")
        assert sorted(e["event_type"] for e in sent) == ["click", "identify"], sent
        assert {(e["user_id"], e["utm_source"], e["utm_medium"], e["utm_campaign"]) for e in sent} == {
            (user_id, "newsletter", "email", "spring sale")
        }
        assert [e.get("identified_user_id") for e in sent if e["event_type"] == "identify"] == [4242]
        assert driver.execute_script("return window.rtAnalytics.identified()") == 4242
        assert "signed in as 4242" in driver.find_element(By.CSS_SELECTOR, ".who").text
        wait_for(
            lambda: counts(stack, user_id) == {"view": 1, "identify": 1, "click": 1},
            30,
            f"the identify event counted under the anonymous id (now {counts(stack, user_id)})",
            interval=0.5,
        )


def test_the_shop_page_is_locked_down(shop):
    import urllib.error
    import urllib.request

    with urllib.request.urlopen(shop, timeout=10) as r:
        csp = r.headers["Content-Security-Policy"]
        assert (
            "default-src 'none'" in csp and "frame-ancestors 'none'" in csp and r.headers["X-Frame-Options"] == "DENY"
        )
    for path in ("../app.py", "app.py", "static/track.js", "../collector/app.py", ".env"):
        try:
            urllib.request.urlopen(shop + path, timeout=10)
            raise AssertionError(f"{path} was served")
        except urllib.error.HTTPError as e:
            assert e.code == 404
