"""The web page in headless Chromium, against the real API, broker and Redis: pick a shopper
and a scene, see the served list and the shopper's features, click an item and find the click
event on the events topic. Also the JSON features endpoint the page reads."""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import orjson
import pytest
import redis
from kafka import KafkaConsumer, TopicPartition
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select, WebDriverWait

from connectors.redis_lists import ListWriter, RecList, encode_rec_list, features_suffix, rec_suffix
from flywheel.events import pseudonymise
from flywheel.settings import Settings
from tests.conftest import api_settings
from tests.integration.test_api import serve

pytestmark = pytest.mark.integration

INSTALL_HINT = (
    "the web page test needs Debian's chromium and chromium-driver: run `bash scripts/install.sh`"
    " (or `apt-get install chromium chromium-driver`)"
)
TRENDING = [["t1", 9.0], ["t2", 8.0], ["t3", 7.0], ["t4", 6.0]]
PERSONAL = [("p1", 2.5), ("p2", 2.0), ("p3", 1.5)]
FEATURES: dict[str, Any] = {
    "n_events": 6,
    "max_ts": 1_700_000_000_000,
    "late": 0,
    "windows": {"3600s": {"click": 2, "view": 3}, "86400s": {"click": 2, "purchase": 1, "view": 3}},
    "totals": {"click": 2, "purchase": 1, "view": 3},
    "categories": {"tea": 4, "cups": 2},
    "recent": ["r1", "r2", "t2"],
    "purchased": ["r1"],
    "factors": [0.3, 0.4],
}


@pytest.fixture(scope="module")
def settings(broker: str, redis_url: str) -> Settings:
    return api_settings(broker, redis_url, "web")


@pytest.fixture(scope="module")
def shopper(settings: Settings) -> Iterator[str]:
    """A raw user id whose list and features are in Redis, as the job writes them."""
    user = f"web-shopper-{uuid.uuid4().hex[:6]}"
    pseudonym = pseudonymise(user, settings.hmac_key)
    rec = RecList(pseudonym, "home", "online_mf", 1, 2, PERSONAL)
    client = redis.Redis.from_url(settings.redis_url)
    ListWriter(client, settings.redis_prefix, 0).write_batch(
        [
            ("trending", orjson.dumps(TRENDING)),
            (rec_suffix("home", pseudonym), encode_rec_list(rec)),
            (features_suffix(pseudonym), orjson.dumps(FEATURES)),
        ]
    )
    yield user
    for key in client.scan_iter(f"{settings.redis_prefix}:*"):
        client.delete(key)
    client.close()


@pytest.fixture(scope="module")
def api(settings: Settings, shopper: str) -> Iterator[httpx.Client]:
    with serve(settings) as client:
        yield client


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    """Headless Chromium through chromedriver; fails (never skips) when they are missing."""
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver_path is None:
        pytest.fail(INSTALL_HINT, pytrace=False)
    options = Options()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(argument)
    options.add_argument("--window-size=1280,1000")
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver: WebDriver, condition: Callable[[WebDriver], Any], what: str) -> Any:
    try:
        return WebDriverWait(driver, 20, poll_frequency=0.1).until(condition)
    except Exception as exc:
        status = driver.find_element(By.ID, "status").text
        raise AssertionError(f"page never showed {what}; status line: {status!r}") from exc


def _rows(driver: WebDriver) -> list[list[str]]:
    """The served list as shown: [rank, item, score, reason] per row."""
    rows = driver.find_elements(By.CSS_SELECTOR, "#list tbody tr")
    return [[cell.text for cell in row.find_elements(By.TAG_NAME, "td")][:4] for row in rows]


def _query(driver: WebDriver, user: str, scene: str, item: str = "") -> None:
    """Fill the form and submit it; waits until the list for this query is shown."""
    field = driver.find_element(By.ID, "user")
    field.clear()
    field.send_keys(user)
    Select(driver.find_element(By.ID, "scene")).select_by_value(scene)
    if item:
        driver.find_element(By.ID, "item").clear()
        driver.find_element(By.ID, "item").send_keys(item)
    before = driver.find_element(By.ID, "list-meta").text
    driver.find_element(By.ID, "show").click()
    _wait(driver, lambda d: d.find_element(By.ID, "list-meta").text != before, f"{scene} list")


def _click_events(settings: Settings, user: str, timeout_s: float = 20) -> list[dict[str, Any]]:
    """The click events of ``user`` on the events topic (read from the beginning)."""
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False)
    try:
        partition = TopicPartition(settings.events_topic, 0)
        consumer.assign([partition])
        consumer.seek_to_beginning(partition)
        found: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout_s
        while not found and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                events = (orjson.loads(r.value) for r in records)
                found += [e for e in events if e["user_id"] == user and e["action"] == "click"]
        return found
    finally:
        consumer.close()


def test_pick_a_shopper_see_list_and_features_click_an_item(
    api: httpx.Client, browser: WebDriver, settings: Settings, shopper: str
) -> None:
    browser.get(f"{api.base_url}/")
    assert browser.current_url.endswith("/ui/")
    _query(browser, shopper, "home")
    assert browser.find_element(By.ID, "strategy").text == "online_mf"
    assert _rows(browser) == [  # r1 was purchased: the trending list is not affected here
        ["1", "p1", "2.500", "personal"],
        ["2", "p2", "2.000", "personal"],
        ["3", "p3", "1.500", "personal"],
        ["4", "t1", "9.000", "trending"],
        ["5", "t2", "8.000", "trending"],
        ["6", "t3", "7.000", "trending"],
        ["7", "t4", "6.000", "trending"],
    ]
    _wait(browser, lambda d: d.find_element(By.ID, "features").is_displayed(), "features")
    summary = browser.find_element(By.ID, "summary").text
    assert "events\n6" in summary and "click 2 · purchase 1 · view 3" in summary
    assert "0.500" in summary  # norm of the user vector (0.3, 0.4)
    recent = [li.text for li in browser.find_elements(By.CSS_SELECTOR, "#recent li")]
    assert recent == ["t2", "r2", "r1"]  # newest first
    hour = browser.find_element(By.CSS_SELECTOR, '#windows tr[data-window="3600s"]')
    assert hour.text.split() == ["1", "h", "3", "2", "0", "0"]  # view click cart purchase
    categories = [li.text for li in browser.find_elements(By.CSS_SELECTOR, "#categories li")]
    assert categories == ["tea ×4", "cups ×2"]

    request_id = browser.find_element(By.ID, "list-meta").text.removeprefix("request ")
    row = browser.find_element(By.CSS_SELECTOR, '#list tr[data-item-id="p2"]')
    row.find_element(By.CSS_SELECTOR, "button.click").click()
    status = _wait(
        browser,
        lambda d: (
            d.find_element(By.ID, "status").get_attribute("data-state") == "ok"
            and "accepted" in d.find_element(By.ID, "status").text
            and d.find_element(By.ID, "status")
        ),
        "the click accepted",
    )
    assert "click on p2 accepted (1 event" in status.text
    assert "clicked" in (row.get_attribute("class") or "")
    clicks = _click_events(settings, shopper)
    assert len(clicks) == 1, clicks
    click = clicks[0]
    assert (click["item_id"], click["scene"], click["position"]) == ("p2", "home", 2)
    assert click["request_id"] == request_id
    assert click["event_id"] == status.get_attribute("data-event-id")


def test_cart_and_product_scenes_and_an_unknown_shopper(
    api: httpx.Client, browser: WebDriver, shopper: str
) -> None:
    browser.get(f"{api.base_url}/ui/")
    _query(browser, shopper, "cart")  # recent items (t2) and purchases are left out
    assert [row[1] for row in _rows(browser)] == ["p1", "p2", "p3", "t1", "t3", "t4"]
    _query(browser, shopper, "product", item="t1")
    assert browser.find_element(By.ID, "strategy").text == "trending"
    assert [(row[1], row[3]) for row in _rows(browser)] == [
        ("t2", "trending"),
        ("t3", "trending"),
        ("t4", "trending"),
    ]
    stranger = f"stranger-{uuid.uuid4().hex[:6]}"
    _query(browser, stranger, "home")
    assert browser.find_element(By.ID, "strategy").text == "trending"
    missing = _wait(
        browser,
        lambda d: (
            d.find_element(By.ID, "features-missing").is_displayed()
            and d.find_element(By.ID, "features-missing")
        ),
        "the missing-features message",
    )
    assert missing.text.startswith(f"HTTP 404: no features for user '{stranger}'")
    assert not browser.find_element(By.ID, "features").is_displayed()


def test_features_endpoint(api: httpx.Client, settings: Settings, shopper: str) -> None:
    found = api.get(f"/v1/users/{shopper}/features")
    assert found.status_code == 200
    assert found.json() == {"user_id": shopper, "features": FEATURES}
    pseudonym = pseudonymise(shopper, settings.hmac_key)
    assert api.get(f"/v1/users/{pseudonym}/features").status_code == 404  # raw ids only
    unknown = api.get("/v1/users/nobody-here/features")
    assert unknown.status_code == 404
    assert unknown.json()["detail"].startswith("no features for user 'nobody-here'")
    assert api.get("/v1/users/" + "u" * 129 + "/features").status_code == 422
    metrics = api.get("/metrics").text
    assert 'endpoint="/v1/users/{user_id}/features",status="404"' in metrics
