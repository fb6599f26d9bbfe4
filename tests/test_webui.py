"""The web chat at `/`: the files as served (ETag, gzip, CSP), and the page in a real browser.

The browser tests drive Debian's chromium through Selenium and its own chromedriver
(tests/browser.py) against a real `llmkit serve` on the gemma model. Without chromium they skip,
in one line; under CI they fail instead, since there a skip would hide a broken setup.
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import openai
import pytest

import llmkit
from llmkit.launcher import stop
from llmkit.server.webui import (
    CONTENT_SECURITY_POLICY,
    Page,
    accepts_gzip,
    etag_matches,
    page_url,
)
from tests import browser
from tests.helpers import LlmkitCli, clean_env, health, root_url, wait_until_idle

WEB = Path(__file__).resolve().parents[1] / "llmkit" / "web"
KEY = "sk-web-test"


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return (
                response.status,
                {k.lower(): v for k, v in response.headers.items()},
                response.read(),
            )
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


# -- the files, without a server --------------------------------------------------------------


def test_the_page_names_each_of_its_files_by_content_hash_and_each_is_served() -> None:
    page = Page.packaged()
    status, _, index = page.respond("/", None, {})
    assert status == 200
    named = re.findall(r'(?:src|href)="(/ui/[^"?]+)\?v=([0-9a-f]{16})"', index.decode())
    assert {path for path, _ in named} >= {
        "/ui/app.js",
        "/ui/style.css",
        "/ui/vendor/marked.umd.js",
    }
    for path, version in named:
        answer = page.respond(path, version, {})
        assert answer is not None and answer[0] == 200, path
        assert answer[1]["cache-control"] == "public, max-age=31536000, immutable"
        # Under an old hash (a page cached before an upgrade), the file is revalidated instead.
        assert page.respond(path, "0" * 16, {})[1]["cache-control"] == "no-cache"  # type: ignore[index]
    assert page.respond("/ui/nothing.js", None, {}) is None
    assert page.respond("/ui/vendor/README.md", None, {}) is None  # only web files are served


def test_an_unchanged_file_is_a_304_and_gzip_is_sent_only_to_who_accepts_it() -> None:
    page = Page.packaged()
    plain = page.respond("/ui/app.js", None, {})
    zipped = page.respond("/ui/app.js", None, {"accept-encoding": "br, gzip"})
    assert plain is not None and zipped is not None
    assert "content-encoding" not in plain[1]
    assert zipped[1]["content-encoding"] == "gzip" and zipped[1]["vary"] == "Accept-Encoding"
    assert len(zipped[2]) < len(plain[2]) / 2
    assert plain[1]["etag"] != zipped[1]["etag"]  # two representations, two strong ETags

    again = page.respond(
        "/ui/app.js", None, {"accept-encoding": "gzip", "if-none-match": zipped[1]["etag"]}
    )
    assert again is not None and again[0] == 304 and again[2] == b""
    stale = page.respond("/ui/app.js", None, {"if-none-match": '"0123"'})
    assert stale is not None and stale[0] == 200


def test_if_none_match_and_accept_encoding_are_read_as_http_says() -> None:
    assert etag_matches('"a", W/"b"', '"b"') and etag_matches("*", '"x"')
    assert etag_matches('W/"a"', '"a"') and not etag_matches('"a"', '"b"')
    assert accepts_gzip("gzip, deflate") and accepts_gzip("*") and accepts_gzip("GZIP;q=0.5")
    assert not accepts_gzip("gzip;q=0") and not accepts_gzip("br") and not accepts_gzip("")


def test_the_page_has_no_inline_script_or_style_and_names_no_other_origin() -> None:
    index = (WEB / "index.html").read_text()
    assert re.findall(r"<script(?![^>]*\bsrc=)", index) == []
    assert "<style" not in index and not re.search(r"\sstyle=", index)
    assert not re.search(r"\son[a-z]+=", index)  # no inline event handlers
    assert "'unsafe-inline'" not in CONTENT_SECURITY_POLICY
    assert CONTENT_SECURITY_POLICY.startswith("default-src 'self';")
    for name in ("index.html", "app.js", "style.css", "icon.svg"):
        text = (WEB / name).read_text()
        urls = re.findall(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text)
        assert urls == [] or name == "icon.svg" and urls == ["http://www.w3.org"], (name, urls)


def test_the_vendored_libraries_keep_their_licences_and_versions() -> None:
    vendor = WEB / "vendor"
    notes = (vendor / "README.md").read_text()
    assert "marked@18.2.1" in notes and "dompurify@3.5.0" in notes
    assert "marked v18.2.1" in (vendor / "marked.umd.js").read_text()[:200]
    assert "DOMPurify 3.5.0" in (vendor / "purify.min.js").read_text()[:200]
    for licence in ("marked.LICENSE.md", "dompurify.LICENSE", "dompurify.LICENSE-MPL"):
        assert (vendor / licence).stat().st_size > 500, licence


def test_the_page_address_is_the_servers_root() -> None:
    assert page_url("http://127.0.0.1:8000/v1") == "http://127.0.0.1:8000/"
    assert page_url("http://[::1]:9000/v1/") == "http://[::1]:9000/"


def test_chat_web_without_a_server_is_one_line_and_exit_1(llmkit_cli: LlmkitCli) -> None:
    from tests.helpers import free_port

    result = llmkit_cli("chat", "--web", "--url", f"http://127.0.0.1:{free_port()}/v1")
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and "no server at" in result.stderr


# -- over HTTP, from a real server ------------------------------------------------------------


@pytest.mark.slow
def test_the_server_serves_the_page_compressed_cached_and_under_a_csp(llmkit_server: Any) -> None:
    root = root_url(llmkit_server)
    status, headers, body = get(root + "/", {"Accept-Encoding": "gzip"})
    assert status == 200 and headers["content-encoding"] == "gzip"
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert headers["cache-control"] == "no-cache" and headers["x-content-type-options"] == "nosniff"
    import gzip

    assert b'<script src="/ui/app.js?v=' in gzip.decompress(body)
    status, again, body = get(
        root + "/", {"Accept-Encoding": "gzip", "If-None-Match": headers["etag"]}
    )
    assert status == 304 and body == b"" and again["etag"] == headers["etag"]
    status, headers, _ = get(root + "/ui/style.css")
    assert status == 200 and headers["content-type"] == "text/css; charset=utf-8"
    status, _, body = get(root + "/ui/missing.css")
    assert status == 404 and json.loads(body)["error"]["type"] == "invalid_request_error"


@pytest.mark.slow
def test_chat_web_prints_the_page_address(llmkit_server: Any, llmkit_cli: LlmkitCli) -> None:
    result = llmkit_cli("chat", "--web", "--url", str(llmkit_server.base_url))
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == root_url(llmkit_server) + "/"


@pytest.mark.slow
def test_no_ui_serves_only_the_api(server_models_dir: Path) -> None:
    with llmkit.serve(
        "gemma-3-270m",
        threads=2,
        offline=True,
        no_ui=True,
        env=clean_env(LLMKIT_MODELS_DIR=str(server_models_dir)),
    ) as client:
        root = root_url(client)
        status, headers, body = get(root + "/")
        assert status == 404 and headers["content-type"] == "application/json"
        assert json.loads(body)["error"]["message"]
        assert get(root + "/ui/app.js")[0] == 404
        assert client.models.list().data  # the API is there
        assert "web chat     off (--no-ui)" in client.llmkit_log.read_text()  # type: ignore[attr-defined]


# -- in a real browser ------------------------------------------------------------------------


@pytest.fixture
def driver() -> Iterator[Any]:
    try:
        browser.require_browser()
    except browser.Unavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(str(exc))
        pytest.skip(str(exc))
    with browser.chromium() as chromium:
        yield chromium


def wait(driver: Any, condition: Any, seconds: float = 120) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, seconds, poll_frequency=0.05).until(lambda _: condition())


def by_id(driver: Any, name: str) -> Any:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, name)


def messages(driver: Any) -> list[Any]:
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, "#messages .msg")


# Read in one script, so that the page re-rendering a message between two reads cannot matter.
_SHOWN = """
return [...document.querySelectorAll('#messages .msg')].map((m) => ({
  role: m.classList.contains('user') ? 'user' : 'assistant',
  state: m.dataset.state,
  text: m.querySelector('.content').innerText,
  stats: m.querySelector('.stats').innerText,
}));
"""


def shown(driver: Any) -> list[dict[str, str]]:
    """The messages on the page: role, state (streaming, done, stopped, error), text, stats."""
    return list(driver.execute_script(_SHOWN))


def answer_state(driver: Any) -> str | None:
    found = shown(driver)
    return found[-1]["state"] if found and found[-1]["role"] == "assistant" else None


def set_setting(driver: Any, name: str, value: str) -> None:
    if by_id(driver, "settings").get_attribute("hidden") is not None:
        by_id(driver, "settings-toggle").click()
    field = by_id(driver, name)
    field.clear()
    field.send_keys(value)


def send(driver: Any, text: str) -> None:
    from selenium.webdriver.common.keys import Keys

    by_id(driver, "composer").send_keys(text, Keys.ENTER)


def open_page(driver: Any, root: str) -> None:
    driver.get(root + "/")
    # textContent: on a phone-sized screen the model's name is hidden, and Selenium's .text is ""
    wait(driver, lambda: by_id(driver, "model").get_attribute("textContent") not in ("…", ""), 30)


def network_address() -> str:
    """This machine's address on its network (no packet is sent), else loopback's."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: only the route is looked up
            return str(probe.getsockname()[0])
        except OSError:
            return "127.0.0.1"


def assert_no_alert(driver: Any) -> None:
    from selenium.common.exceptions import NoAlertPresentException

    with pytest.raises(NoAlertPresentException):
        driver.switch_to.alert  # noqa: B018 - the property raises when there is none


def assert_only_own_origin(driver: Any, root: str) -> None:
    urls = [
        u
        for u in browser.requested_urls(driver)
        if urlsplit(u).scheme in ("http", "https", "ws", "wss")
    ]
    own = urlsplit(root).netloc
    assert urls, "the performance log recorded no request"
    assert [u for u in urls if urlsplit(u).netloc != own] == []


@pytest.mark.slow
def test_a_conversation_streams_shows_stats_and_survives_a_reload(
    llmkit_server: Any, driver: Any
) -> None:
    root = root_url(llmkit_server)
    browser.requested_urls(driver)  # the new-tab page's own requests: not the page's
    open_page(driver, root)
    assert by_id(driver, "model").text == "gemma-3-270m"
    # Enough tokens for several steps even when n-gram drafts bring several tokens at once.
    set_setting(driver, "max-tokens", "40")
    set_setting(driver, "temperature", "0")

    send(driver, "Say hello.")
    lengths = set()
    wait(driver, lambda: answer_state(driver) == "streaming", 30)
    while (last := shown(driver)[-1])["state"] == "streaming":
        lengths.add(len(last["text"]))
        time.sleep(0.02)
    assert answer_state(driver) == "done"
    assert len(lengths - {0}) >= 2, f"the answer did not arrive piece by piece: {lengths}"
    stats = shown(driver)[-1]["stats"]
    first = re.search(
        r"^first token \d+\.\d\d s · (\d+) tokens · \d+\.\d tokens/s · (\d+) of \d+ prompt tokens cached",
        stats,
    )
    assert first and 2 <= int(first[1]) <= 40, stats

    # A user message is text: markup in it is shown, never made into elements, never run.
    attack = "<img src=x onerror=alert(1)>"
    send(driver, attack)
    wait(driver, lambda: len(messages(driver)) == 4 and answer_state(driver) == "done")
    assert shown(driver)[2]["text"] == attack
    assert driver.find_elements("css selector", "#messages img") == []
    stats = shown(driver)[-1]["stats"]
    cached = re.search(r"(\d+) of (\d+) prompt tokens cached", stats)
    assert cached and int(first[2]) < int(cached[1]) < int(cached[2]), (
        stats
    )  # the first turn's prompt was reused
    assert_no_alert(driver)

    # Regenerate replaces the last answer; editing the first question drops what came after it.
    messages(driver)[-1].find_element("css selector", "button.regenerate").click()
    wait(driver, lambda: answer_state(driver) == "streaming", 30)
    wait(driver, lambda: answer_state(driver) == "done")
    assert len(messages(driver)) == 4

    driver.refresh()
    wait(driver, lambda: len(messages(driver)) == 4, 30)
    assert shown(driver)[2]["text"] == attack
    titles = [b.text for b in driver.find_elements("css selector", "#conversations button")]
    assert titles == ["Say hello."]
    assert by_id(driver, "max-tokens").get_attribute("value") == "40"  # the settings are kept too

    messages(driver)[0].find_element("css selector", "button.edit").click()
    box = messages(driver)[0].find_element("css selector", ".edit textarea")
    box.clear()
    send_keys_enter(box, "Say goodbye.")
    wait(driver, lambda: len(messages(driver)) == 2 and answer_state(driver) == "done")
    assert shown(driver)[0]["text"] == "Say goodbye."
    assert_no_alert(driver)
    assert_only_own_origin(driver, root)


def send_keys_enter(field: Any, text: str) -> None:
    from selenium.webdriver.common.keys import Keys

    field.send_keys(text, Keys.ENTER)


@pytest.mark.slow
def test_markdown_is_rendered_and_whatever_html_it_holds_is_not_run(
    llmkit_server: Any, driver: Any, tmp_path: Path
) -> None:
    answer = (
        "Here:\n\n| a | b |\n| --- | --- |\n| 1 | 2 |\n\n- one\n- two\n\n"
        "```python\nprint('hi')\n```\n\n"
        '<script>window.pwned = 1</script>\n\n<img src=x onerror="window.pwned = 2">\n\n'
        '[click](javascript:window.pwned=3) and <b onclick="window.pwned=4">bold</b>'
    )
    saved = tmp_path / "chat.json"  # as `llmkit chat` /save writes it
    saved.write_text(
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": "Show me"},
                    {"role": "assistant", "content": answer},
                ]
            }
        )
    )
    open_page(driver, root_url(llmkit_server))
    by_id(driver, "import-file").send_keys(str(saved))
    wait(driver, lambda: len(messages(driver)) == 2, 10)

    content = messages(driver)[1].find_element("css selector", ".content")
    assert content.find_elements("css selector", "table td")[1].text == "2"
    assert len(content.find_elements("css selector", "ul li")) == 2
    assert content.find_element("css selector", "pre code").text == "print('hi')"
    assert content.find_element("css selector", "pre button.copy-code")
    for hostile in ("script", "img", "[onerror]", "[onclick]", "a[href^='javascript']"):
        assert content.find_elements("css selector", hostile) == [], hostile
    assert "<script>window.pwned = 1</script>" in content.text  # shown as the text it is
    for link in content.find_elements("css selector", "a"):
        link.click()
    assert driver.execute_script("return window.pwned === undefined")
    assert_no_alert(driver)


@pytest.mark.slow
def test_stop_aborts_the_answer_and_frees_the_slot(llmkit_server: Any, driver: Any) -> None:
    open_page(driver, root_url(llmkit_server))
    set_setting(driver, "max-tokens", "2000")  # far more than the seconds the test waits
    set_setting(driver, "temperature", "0")
    send(driver, "Count from 1 to 1000: 1, 2, 3, 4, 5,")
    wait(
        driver,
        lambda: len(messages(driver)) == 2 and shown(driver)[1]["text"],
    )
    assert answer_state(driver) == "streaming"
    by_id(driver, "stop").click()

    wait(driver, lambda: answer_state(driver) == "stopped", 10)
    started = time.monotonic()
    wait_until_idle(llmkit_server, timeout=15)
    assert time.monotonic() - started < 15
    assert "stopped" in shown(driver)[1]["stats"]
    assert by_id(driver, "send").is_displayed() and not by_id(driver, "stop").is_displayed()


@pytest.mark.slow
def test_the_page_asks_for_the_api_key_once_and_keeps_typed_text_when_busy_or_gone(
    server_models_dir: Path, driver: Any
) -> None:
    # Listening on every interface and opened at this machine's network address, as a team
    # reaches it: the page's requests carry an Origin that is not loopback, and OriginGuard lets
    # them through as the server's own origin.
    with llmkit.serve(
        "gemma-3-270m",
        host="0.0.0.0",
        threads=2,
        offline=True,
        api_key=KEY,
        parallel=1,
        max_queue=1,
        env=clean_env(LLMKIT_MODELS_DIR=str(server_models_dir)),
    ) as client:
        root = root_url(client)
        # The page's files need no key; the API does.
        assert get(root + "/")[0] == 200 and get(root + "/ui/app.js")[0] == 200
        assert get(root + "/v1/models")[0] == 401

        driver.get(f"http://{network_address()}:{urlsplit(root).port}/")
        dialog = by_id(driver, "key-dialog")
        wait(driver, lambda: dialog.get_attribute("open") is not None, 30)
        send_keys_enter(by_id(driver, "key-input"), "wrong")
        wait(driver, lambda: "refused" in by_id(driver, "key-reason").text, 10)
        send_keys_enter(by_id(driver, "key-input"), KEY)
        wait(driver, lambda: by_id(driver, "model").text == "gemma-3-270m", 10)

        set_setting(driver, "max-tokens", "3")
        send(driver, "Hi")
        wait(driver, lambda: answer_state(driver) == "done")
        driver.refresh()  # the key is kept: no second question
        wait(driver, lambda: by_id(driver, "model").text == "gemma-3-270m", 30)
        assert by_id(driver, "key-dialog").get_attribute("open") is None

        # The one slot busy and the one queue place taken: a 503, said plainly, and the message
        # stays typed. (The waiting request asks for 2 tokens, to be done soon after.)
        sdk = openai.OpenAI(base_url=str(client.base_url), api_key=KEY)
        busy = sdk.chat.completions.create(
            model="any",
            messages=[{"role": "user", "content": "1, 2, 3,"}],
            max_tokens=2000,
            stream=True,
        )
        next(iter(busy))
        waiting = threading.Thread(
            target=lambda: list(
                sdk.chat.completions.create(
                    model="any",
                    messages=[{"role": "user", "content": "Hi"}],
                    max_tokens=2,
                    stream=True,
                )
            )
        )
        waiting.start()
        wait(driver, lambda: health(client)["waiting"] == 1, 30)
        send(driver, "Are you there?")
        wait(driver, lambda: by_id(driver, "status").is_displayed(), 30)
        assert "busy" in by_id(driver, "status").text
        assert by_id(driver, "composer").get_attribute("value") == "Are you there?"
        busy.close()
        waiting.join(120)
        wait_until_idle(client, timeout=30)

        stop(client.llmkit_process)  # type: ignore[attr-defined]
        by_id(driver, "send").click()
        wait(driver, lambda: "Cannot reach the server" in by_id(driver, "status").text, 30)
        assert by_id(driver, "composer").get_attribute("value") == "Are you there?"
        assert len(messages(driver)) == 2  # the turn that failed left nothing behind


_PICKER = "return [...document.querySelectorAll('#model-picker option')].map((o) => o.textContent);"


def models_asked(driver: Any) -> list[str]:
    """The `model` of each chat request the page sent since the last look."""
    return [
        json.loads(r["postData"])["model"]
        for r in browser.sent_requests(driver)
        if r["method"] == "POST" and r["url"].endswith("/v1/chat/completions")
    ]


@pytest.mark.slow
def test_the_model_picker_lists_the_servers_models_and_requests_name_the_picked_one(
    llmkit_server: Any, driver: Any
) -> None:
    root = root_url(llmkit_server)
    driver.get(root + "/")
    # A model picked on an earlier visit that the server no longer serves: its first is asked.
    driver.execute_script("localStorage.setItem('llmkit.model', 'gone-model')")
    open_page(driver, root)
    # Today's server says no state: its one model is loaded. One model: nothing to pick, so the
    # picker stays hidden and the name is shown.
    assert driver.execute_script(_PICKER) == ["gemma-3-270m (loaded)"]
    assert not by_id(driver, "model-picker").is_displayed()
    assert by_id(driver, "model").text == "gemma-3-270m"
    set_setting(driver, "max-tokens", "3")
    browser.sent_requests(driver)  # what loading the page sent
    send(driver, "Hi")
    wait(driver, lambda: answer_state(driver) == "done")
    assert models_asked(driver) == ["gemma-3-270m"]
    assert messages(driver)[-1].find_element("css selector", ".role").text == "gemma-3-270m"

    # Picking (the list shows with several models) is kept in this browser and asked from then
    # on, also after a reload.
    driver.execute_script(
        "const p = document.getElementById('model-picker');"
        "p.value = 'gemma-3-270m'; p.dispatchEvent(new Event('change'));"
    )
    assert driver.execute_script("return localStorage.getItem('llmkit.model')") == "gemma-3-270m"
    driver.refresh()
    wait(driver, lambda: by_id(driver, "model-picker").get_attribute("value") == "gemma-3-270m", 30)
    browser.sent_requests(driver)
    send(driver, "Hello again")
    wait(driver, lambda: answer_state(driver) == "done" and len(messages(driver)) == 4)
    assert models_asked(driver) == ["gemma-3-270m"]
    assert_no_alert(driver)


@pytest.mark.slow
def test_the_page_fits_a_phone_works_from_the_keyboard_and_follows_dark_mode(
    llmkit_server: Any, driver: Any
) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    driver.set_window_size(390, 800)
    driver.execute_cdp_cmd(
        "Emulation.setEmulatedMedia",
        {"features": [{"name": "prefers-color-scheme", "value": "dark"}]},
    )
    open_page(driver, root_url(llmkit_server))
    assert driver.execute_script("return document.documentElement.scrollWidth <= innerWidth")
    background = driver.execute_script("return getComputedStyle(document.body).backgroundColor")
    assert sum(map(int, re.findall(r"\d+", background)[:3])) < 150, background  # dark

    # The conversation list is off-screen until the menu button opens it, Escape closes it.
    assert not by_id(driver, "new-chat").is_displayed()
    by_id(driver, "open-sidebar").send_keys(Keys.ENTER)
    wait(driver, lambda: by_id(driver, "new-chat").is_displayed(), 5)
    assert driver.switch_to.active_element == by_id(driver, "new-chat")
    ActionChains(driver).send_keys(Keys.ESCAPE).perform()
    wait(driver, lambda: not by_id(driver, "new-chat").is_displayed(), 5)

    # Shift+Enter is a new line, not a send.
    composer = by_id(driver, "composer")
    composer.send_keys("one", Keys.SHIFT, Keys.ENTER, Keys.SHIFT, "two")
    assert composer.get_attribute("value") == "one\ntwo" and shown(driver) == []
