"""The pages in a real browser against a real server (conftest.py): what a person does on `/`
and on `/console`, at desktop and at phone width."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from .conftest import ADMIN_TOKEN, PHONE, Page

K = 5


@pytest.fixture(scope="module")
def known_users(small_bundle: Path) -> list[str]:
    users = json.loads((small_bundle / "users.json").read_text())
    return sorted((u for u, s in users.items() if len(s) >= 10), key=lambda u: (len(users[u]), u))


def ids_in(page: Page, selector: str) -> list[str]:
    # read in one script: the list is replaced on every refresh, so element handles go stale
    return page.driver.execute_script(
        "return [...document.querySelectorAll(arguments[0])].map(e => e.dataset.itemId);",
        selector)


def card_ids(page: Page) -> list[str]:
    return ids_in(page, "#cards .card")


def history_ids(page: Page) -> list[str]:
    return ids_in(page, "#history li[data-item-id]")


def show_user(page: Page, user: str, k: int = K) -> list[str]:
    box = page.one("#user-id")
    box.clear()
    box.send_keys(user)
    k_box = page.one("#k")
    k_box.clear()
    k_box.send_keys(str(k))
    page.one("#user-form button[type=submit]").click()
    page.wait(lambda d: len(card_ids(page)) == k
              and user in page.one("#summary").text, what=f"{k} cards for {user}")
    return card_ids(page)


def no_horizontal_scroll(page: Page) -> bool:
    return page.driver.execute_script(
        "return document.documentElement.scrollWidth <= window.innerWidth")


def test_pick_a_user_play_the_first_card_and_see_it_in_the_history(
        page: Page, known_users: list[str]) -> None:
    page.open("/")
    timing = page.driver.execute_script(
        "const t = performance.getEntriesByType('navigation')[0];"
        "return {dom_content_loaded_ms: t.domContentLoadedEventEnd, load_ms: t.loadEventEnd};")
    page.record("try_page_load", timing)  # reported, not asserted (noisy shared machine)
    user = known_users[len(known_users) // 2]
    ids = show_user(page, user)
    first = page.one("#cards .card")
    assert first.find_element("css selector", "h3").text
    assert "score" in first.text and "from " in first.text  # score and source on the card
    assert first.find_elements("css selector", "ul.reasons li")
    assert page.one("#degraded").get_attribute("class").count("hidden") == 1

    first.find_element("css selector", "button[data-action=view]").click()
    page.wait(lambda d: ids[0] not in card_ids(page) and len(card_ids(page)) == K,
              what="the played item leaves the list")
    page.wait(lambda d: history_ids(page)[:1] == [ids[0]], what="and tops the history")
    assert "Sent view" in page.one("#note").text
    page.screenshot("try-desktop")


def test_actions_work_from_the_keyboard_and_dislike_removes_the_item(
        page: Page, known_users: list[str]) -> None:
    from selenium.webdriver.common.keys import Keys

    page.open("/")
    user = known_users[len(known_users) // 3]
    ids = show_user(page, user)
    before = history_ids(page)
    second = page.css("#cards .card")[1]
    second.find_element("css selector", "button[data-action=dislike]").send_keys(Keys.ENTER)
    page.wait(lambda d: ids[1] not in card_ids(page), what="the disliked item leaves the list")
    assert history_ids(page) == before  # a dislike is not a watch
    page.wait(lambda d: "Sent dislike" in page.one("#note").text, what="the refresh")
    like = page.one("#cards .card button[data-action=like]")
    liked = card_ids(page)[0]
    like.send_keys(Keys.SPACE)
    page.wait(lambda d: history_ids(page)[:1] == [liked], what="a liked item enters the history")
    # focus comes back to the list, so the next action is one key away
    page.wait(lambda d: d.switch_to.active_element.get_attribute("data-action") == "view",
              what="focus on the first card's play button")


def test_search_by_id_or_a_random_user(page: Page, known_users: list[str]) -> None:
    page.open("/")
    prefix = known_users[0][:1]
    page.one("#user-id").send_keys(prefix)
    page.wait(lambda d: page.css("#user-suggestions option"), what="id suggestions")
    suggested = [o.get_attribute("value") for o in page.css("#user-suggestions option")]
    assert suggested and all(u.startswith(prefix) for u in suggested)
    page.one("#random-user").click()
    page.wait(lambda d: len(card_ids(page)) > 0, what="a random user's list")
    assert page.one("#user-id").get_attribute("value")


def test_a_new_user_chooses_interests(page: Page) -> None:
    page.open("/")
    page.one("#new-user summary").click()
    page.wait(lambda d: len(page.css("#tag-chips .chip")) >= 5, what="the catalogue's tags")
    chips = page.css("#tag-chips .chip")[:2]
    wanted = [c.get_attribute("data-tag") for c in chips]
    for chip in chips:
        chip.click()
    assert all(c.get_attribute("aria-pressed") == "true" for c in chips)
    page.one("#start-new").click()
    page.wait(lambda d: len(card_ids(page)) > 0, what="a new user's list")
    assert "interests" in page.one("#summary").text
    first_tags = page.one("#cards .card").text
    assert any(f"#{t}" in first_tags for t in wanted), (wanted, first_tags)
    assert page.one("#user-id").get_attribute("value").startswith("new-")
    assert "Nothing yet" in page.one("#history").text
    assert "No tags yet" in page.one("#taste").text

    # a play raises the played video's tags in the user's taste, a dislike pushes some down
    played = page.one("#cards .card")
    played_tags = {t.text.lstrip("#") for t in played.find_elements("css selector", ".tag")}
    played.find_element("css selector", "button[data-action=view]").click()
    page.wait(lambda d: page.css("#taste strong.up"), what="tags going up")
    risen = {li.get_attribute("data-tag") for li in page.css("#taste li")
             if li.find_elements("css selector", "strong.up")}
    assert risen and risen <= played_tags
    page.wait(lambda d: "Sent view" in page.one("#note").text, what="the refresh")
    page.one("#cards .card button[data-action=dislike]").click()
    page.wait(lambda d: page.css("#taste strong.down, #taste-down strong.down"),
              what="tags going down")

    page.one("#tag-filter").send_keys(wanted[0][:3])
    page.wait(lambda d: all(wanted[0][:3] in c.get_attribute("data-tag")
                            for c in page.css("#tag-chips .chip")), what="tags filtered")


def test_an_items_similar_videos(page: Page, known_users: list[str]) -> None:
    from selenium.webdriver.common.keys import Keys

    page.open("/")
    show_user(page, known_users[-1])
    title = page.one("#cards .card h3 button")
    name = title.text
    title.click()
    page.wait(lambda d: len(page.css("#similar li[data-item-id]")) > 0, what="similar videos")
    dialog = page.one("#item-dialog")
    assert dialog.get_attribute("open") is not None
    assert page.one("#item-title").text == name
    sources = {b.text for b in page.css("#similar .badge")}
    assert sources <= {"ann", "content"} and sources, sources
    # one similar video opens its own similar list
    first = page.one("#similar li[data-item-id] button")
    other = first.text
    first.click()
    page.wait(lambda d: page.one("#item-title").text == other, what="the neighbour's page")
    page.driver.switch_to.active_element.send_keys(Keys.ESCAPE)
    page.wait(lambda d: dialog.get_attribute("open") is None, what="Escape closes it")


def test_api_errors_are_shown_in_words(page: Page, known_users: list[str]) -> None:
    page.allowed.append("status of 422")  # the browser logs the failed request itself
    page.open("/")
    # past the form's own limits, as a script or an old page could send it
    page.driver.execute_script("const k = document.getElementById('k');"
                               "k.removeAttribute('max'); k.value = '500';")
    page.one("#user-id").send_keys(known_users[0])
    page.one("#user-form button[type=submit]").click()
    error = page.one("#error")
    page.wait(lambda d: error.is_displayed(), what="the error box")
    assert "422" in error.text and "k: Input should be less than or equal to 100" in error.text


def test_phone_width_is_readable(page: Page, known_users: list[str]) -> None:
    page.open("/", PHONE)
    show_user(page, known_users[len(known_users) // 4])
    assert no_horizontal_scroll(page)
    cards = page.css("#cards .card")
    assert cards[0].size["width"] <= PHONE[0]
    history = page.one("#history")  # stacked under the list at this width
    assert history.location["y"] > cards[-1].location["y"]
    page.screenshot("try-phone")


def test_console_shows_readiness_live_charts_and_offline_metrics(
        page: Page, site: str, known_users: list[str]) -> None:
    for user in known_users[:8]:  # traffic for the charts
        assert httpx.get(f"{site}/v1/users/{user}/recommendations?k=5").status_code == 200
    page.open("/console")
    timing = page.driver.execute_script(
        "const t = performance.getEntriesByType('navigation')[0];"
        "return {dom_content_loaded_ms: t.domContentLoadedEventEnd, load_ms: t.loadEventEnd};")
    page.record("console_page_load", timing)
    page.wait(lambda d: len(page.css("#ready .ready.up")) == 4, what="four parts ready")
    # charts: lines with points, requests/s above zero at some point
    page.wait(lambda d: page.css("#chart-rps svg path[data-series='recommendations']"),
              timeout=30, what="the requests/s chart")
    page.wait(lambda d: page.css("#chart-latency svg path") and page.css("#chart-stages svg path"),
              timeout=30, what="the latency charts")
    paths = page.css("#chart-stages svg path")
    assert {p.get_attribute("data-series") for p in paths} >= {"hydrate", "retrieve", "score"}
    assert page.css("#chart-degraded svg")
    assert "requests/s" in page.one("#live-note").text
    rows = page.css("#stage-table tbody tr")
    assert len(rows) >= 4
    # offline metrics: the metrics.json table, recall per source, the chart image
    page.wait(lambda d: len(page.css("#metrics-table tbody tr")) >= 5, what="metrics table")
    models = [r.find_element("css selector", "th").text
              for r in page.css("#metrics-table tbody tr")]
    assert "two_stage" in models
    recall_sources = [r.find_element("css selector", "th").text
                      for r in page.css("#recall-table tbody tr")]
    assert {"ann", "content"} <= set(recall_sources)
    image = page.one("#metrics-png")
    page.wait(lambda d: d.execute_script("return arguments[0].naturalWidth", image) > 0,
              what="metrics.png")
    page.screenshot("console-desktop")
    page.open("/console", PHONE)
    page.wait(lambda d: page.css("#chart-rps svg path"), timeout=30, what="charts at 390 px")
    assert no_horizontal_scroll(page)
    page.screenshot("console-phone")


def test_console_reload_needs_the_typed_token(page: Page) -> None:
    page.allowed.append("status of 403")
    page.open("/console")
    assert ADMIN_TOKEN not in page.driver.page_source  # no secret in the page
    token = page.one("#admin-token")
    token.send_keys("wrong-token")
    page.one("#reload-form button").click()
    result = page.one("#admin-result")
    page.wait(lambda d: "failed" in result.text, what="a refused reload")
    assert "403" in result.text and "wrong admin token" in result.text
    token.clear()
    token.send_keys(ADMIN_TOKEN)
    page.one("#reload-form button").click()
    page.wait(lambda d: "Reloaded" in result.text, timeout=60, what="a reload")
    assert ADMIN_TOKEN not in page.driver.page_source


def test_a_degraded_answer_shows_a_banner_and_the_console_a_part_down(
        page: Page, degraded_site: str, known_users: list[str]) -> None:
    page.allowed.append("status of 503")  # /readyz answers 503 while the ranker is down
    user = known_users[len(known_users) // 5]
    page.open(f"/?user={user}", base=degraded_site)
    banner = page.one("#degraded")
    page.wait(lambda d: banner.is_displayed(), what="the degraded banner")
    assert "Degraded answer: the ranker (score) did not answer" in banner.text
    assert len(card_ids(page)) == 10  # still a full list, in retrieval's order
    page.screenshot("try-degraded")
    page.open("/console", base=degraded_site)
    page.wait(lambda d: page.css("#ready .ready.down"), what="a part down")
    down = [t.get_attribute("data-part") for t in page.css("#ready .ready.down")]
    assert set(down) == {"Gateway", "Ranking"}
    page.wait(lambda d: page.css("#chart-degraded svg rect"), timeout=30,
              what="degraded answers on the chart")


def test_console_shows_the_active_experiment_per_arm(
        page: Page, experiment_site: str, known_users: list[str]) -> None:
    arms_seen = set()
    for user in known_users[:20]:  # answers in both arms (assignment is a hash of the user)
        r = httpx.get(f"{experiment_site}/v1/users/{user}/recommendations?k=5")
        assert r.status_code == 200
        arms_seen.add(r.json()["arm"])
    assert arms_seen == {"popular", "model"}
    page.open("/console", base=experiment_site)
    page.wait(lambda d: len(page.css("#arms-table tbody tr")) == 2, timeout=30,
              what="one row per arm")
    rows = {r.get_attribute("data-arm"): r for r in page.css("#arms-table tbody tr")}
    assert set(rows) == {"popular", "model"}
    assert "(control)" in rows["popular"].find_element("css selector", "th").text
    answers = sum(int(r.find_elements("css selector", "td")[1].text) for r in rows.values())
    assert answers >= 20  # every answer above is an impression of its arm
    assert "console-check" in page.one("#arms-facts").text
    page.screenshot("console-experiment")
