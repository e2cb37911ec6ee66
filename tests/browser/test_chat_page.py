"""The chat page in a real Chromium, against a real daphne (docs/api.md#the-chat-page)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
from playwright.sync_api import Page, expect

from ai.quota.services import quota_get_or_create
from conversations.models import Context, Message
from flows.models import Flow
from tests.browser.conftest import PASSWORD, login
from tests.browser.proxy import CuttableProxy

LAST_REPLY = ".message--assistant >> nth=-1"
LAST_REPLY_BODY = f"{LAST_REPLY} >> .message__body"


def send(page: Page, text: str) -> None:
    page.fill("#composer-input", text)
    page.press("#composer-input", "Enter")


def reply_text(page: Page) -> str:
    return page.locator(LAST_REPLY_BODY).text_content() or ""


def wait_reply_status(page: Page, status: str, timeout: float = 20_000) -> None:
    expect(page.locator(LAST_REPLY)).to_have_attribute("data-status", status, timeout=timeout)


def wait_reply_length(page: Page, minimum: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while len(reply_text(page)) < minimum:
        assert time.monotonic() < deadline, f"the reply did not reach {minimum} characters"
        page.wait_for_timeout(25)


def stored_reply(message_id: str) -> Message:
    return Message.objects.get(pk=message_id)


def record_resume(resumes: list[str], url: str) -> None:
    """Note the page's EventSource requests to the resume endpoint."""
    if "/stream?last_event_id=" in url:
        resumes.append(url)


def last_reply_id(page: Page) -> str:
    message_id = page.locator(LAST_REPLY).get_attribute("data-message-id")
    assert message_id, "the reply has no message id (no metadata event?)"
    return message_id


# --- Login -------------------------------------------------------------------------------------


def test_login_redirects_then_shows_the_page_and_logout_works(page, server, user, chat_context):
    response = page.goto(f"{server.url}/")
    assert "/accounts/login/?next=/" in page.url
    assert "script-src 'self'" in response.headers["content-security-policy"]

    page.fill("#id_username", user.username)
    page.fill("#id_password", "wrong")
    page.click("button[type=submit]")
    expect(page.get_by_role("alert")).to_contain_text("did not match")

    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_selector("body[data-ready=true]")
    assert page.url.startswith(f"{server.url}/")
    expect(page.locator("#username")).to_have_text("alice")
    expect(page.locator("#context-list [aria-current=true]")).to_have_text("Work")
    quota = page.locator("[data-quota=requests]")
    expect(quota).to_have_text("200 of 200")

    page.click("text=Log out")
    page.wait_for_url("**/")
    page.goto(f"{server.url}/")
    assert "/accounts/login/" in page.url


def test_the_page_sends_a_strict_csp_and_a_csrf_cookie(logged_in, server):
    static: list[str] = []
    logged_in.on("request", lambda r: static.append(r.url) if "/static/" in r.url else None)
    response = logged_in.goto(f"{server.url}/")
    logged_in.wait_for_selector("body[data-ready=true]")
    csp = response.headers["content-security-policy"]
    for directive in (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "frame-ancestors 'none'",
    ):
        assert directive in csp
    assert "unsafe-inline" not in csp
    assert any(c["name"] == "csrftoken" for c in logged_in.context.cookies())
    # Static files are the hashed names of collectstatic's manifest (DJANGO_DEBUG off).
    src = logged_in.locator("script[type=module]").get_attribute("src")
    assert src.startswith("/static/web/chat.") and src != "/static/web/chat.js"
    # ...and so are the modules chat.js imports (web.storage rewrites the imports).
    names = sorted(url.rsplit("/", 1)[1] for url in static)
    assert len(names) == 5, names  # style.css, chat.js, api.js, sse.js, markdown.js
    assert not {"api.js", "sse.js", "markdown.js", "chat.js", "style.css"} & set(names), names


# --- A turn: typing, flows, quota --------------------------------------------------------------


def test_reply_types_in_and_flows_appear(logged_in: Page, chat_context, user):
    page = logged_in
    # Sample the reply's length in the page itself, every 10 ms, until it completes.
    page.evaluate(
        """() => {
            window.__lengths = [];
            window.__sampler = setInterval(() => {
                const bodies = document.querySelectorAll('.message--assistant .message__body');
                const last = bodies[bodies.length - 1];
                if (last) window.__lengths.push(last.textContent.length);
            }, 10);
        }"""
    )
    send(page, "I need to book a flight and call the client")
    expect(page.locator(".message--user .message__body").last).to_have_text(
        "I need to book a flight and call the client"
    )
    wait_reply_length(page, 15)
    screenshot = os.environ.get("WEB_SCREENSHOT")
    if screenshot:  # docs/screenshot.png: WEB_SCREENSHOT=docs/screenshot.png pytest ...
        Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=screenshot)
    wait_reply_status(page, "complete")
    lengths = page.evaluate("() => { clearInterval(window.__sampler); return window.__lengths; }")
    distinct = sorted(set(lengths))
    assert len(distinct) >= 5, f"the reply did not grow visibly: {distinct}"

    message = stored_reply(last_reply_id(page))
    assert message.status == "complete"
    assert reply_text(page) == message.content

    # Two flows from "book a flight and call the client", with their priority.
    flows = page.locator("#flow-list .flow")
    expect(flows).to_have_count(2)
    titles = " | ".join(flows.all_text_contents()).lower()
    assert "book a flight" in titles and "call the client" in titles
    expect(flows.first.locator(".badge")).to_contain_text("priority")
    assert Flow.objects.filter(context=chat_context).count() == 2

    # Quota: one request consumed, shown after `done`.
    expect(page.locator("[data-quota=requests]")).to_have_text("199 of 200")

    # The new conversation is listed and selected; the URL remembers it.
    expect(page.locator("#conversation-list [aria-current=true]")).to_have_count(1)
    assert f"conversation={message.conversation_id}" in page.url

    # Mark one flow done (PATCH /api/v1/flows/{id}/).
    first = flows.first
    flow_id = first.get_attribute("data-flow-id")
    first.get_by_role("button", name="Mark").click()
    expect(page.locator(f"[data-flow-id='{flow_id}']")).to_have_attribute("data-status", "done")
    assert Flow.objects.get(pk=flow_id).status == "done"


def test_a_second_turn_continues_the_conversation(logged_in: Page):
    page = logged_in
    send(page, "Hello there")
    wait_reply_status(page, "complete")
    first_id = last_reply_id(page)
    send(page, "And again")
    wait_reply_status(page, "complete")
    second_id = last_reply_id(page)
    assert first_id != second_id
    first, second = stored_reply(first_id), stored_reply(second_id)
    assert first.conversation_id == second.conversation_id
    expect(page.locator(".message")).to_have_count(4)


# --- Stop, reload, failures --------------------------------------------------------------------


def test_stop_leaves_the_reply_cancelled(logged_in: Page):
    page = logged_in
    send(page, "[[mock:long:300]] tell me a long story")
    wait_reply_length(page, 30)
    page.click("#stop")
    wait_reply_status(page, "cancelled")
    expect(page.locator("#stop")).to_be_hidden()
    message = stored_reply(last_reply_id(page))
    assert message.status == "cancelled"
    assert message.finish_reason == "cancelled"
    assert message.content and reply_text(page) == message.content


def test_reload_mid_reply_resumes_without_loss_or_duplicates(logged_in: Page):
    page = logged_in
    resumes: list[str] = []
    page.on("request", lambda r: record_resume(resumes, r.url))
    send(page, "[[mock:long:150]] a long answer please")
    wait_reply_length(page, 60)
    message_id = last_reply_id(page)

    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    # The stored part is shown at once and the rest follows through EventSource.
    wait_reply_status(page, "complete", timeout=30_000)
    assert resumes and f"/messages/{message_id}/stream" in resumes[0]
    expect(page.locator(".message--assistant")).to_have_count(1)
    message = stored_reply(message_id)
    assert message.status == "complete"
    assert reply_text(page) == message.content  # the full reply, once


def test_fetch_stream_dropping_is_followed_with_eventsource(
    page: Page, server, user, chat_context, console_errors
):
    # The browser talks to daphne through a proxy whose connections we cut mid-reply.
    console_errors.allow("ERR_INCOMPLETE_CHUNKED_ENCODING")  # Chromium logs the cut stream
    proxy = CuttableProxy(server.port)
    try:
        login(page, proxy.url, user.username)
        resumes: list[str] = []
        page.on("request", lambda r: record_resume(resumes, r.url))
        send(page, "[[mock:long:150]] another long answer")
        wait_reply_length(page, 40)
        message_id = last_reply_id(page)
        proxy.cut()  # the fetch stream breaks; the page follows with EventSource
        wait_reply_status(page, "complete", timeout=30_000)
        assert resumes and f"/messages/{message_id}/stream" in resumes[0]
        message = stored_reply(message_id)
        assert message.status == "complete"
        assert reply_text(page) == message.content
    finally:
        proxy.close()


def test_reply_html_and_script_run_nothing(logged_in: Page):
    page = logged_in
    payload = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=1</script>'
    send(page, f"[[mock:echo]] {payload}")
    wait_reply_status(page, "complete")
    assert payload in reply_text(page)
    assert page.evaluate("() => window.__pwned") is None
    assert page.locator("#messages img, #messages script").count() == 0
    message = stored_reply(last_reply_id(page))
    assert reply_text(page) == message.content


def test_error_event_shows_its_message_and_retry(logged_in: Page):
    page = logged_in
    send(page, "[[mock:error:ai_timeout]] hello")
    wait_reply_status(page, "failed")
    error = page.locator(f"{LAST_REPLY} >> .message__error")
    expect(error).to_be_visible()
    expect(error.get_by_role("button", name="Retry")).to_be_visible()


def test_refusals_before_the_stream_are_shown(logged_in: Page, user, console_errors):
    page = logged_in
    console_errors.allow("status of 429")
    quota = quota_get_or_create(user=user)
    quota.requests_limit = 0
    quota.save(update_fields=["requests_limit"])
    send(page, "Hello")
    expect(page.locator("#notice")).to_be_visible()
    expect(page.locator("#notice")).not_to_be_empty()
    # Nothing was sent: no bubbles, and the text is back in the composer.
    expect(page.locator(".message")).to_have_count(0)
    expect(page.locator("#composer-input")).to_have_value("Hello")
    expect(page.locator("#notice")).to_contain_text("Try again in")  # Retry-After


# --- Contexts, layout ----------------------------------------------------------------------------


def test_create_a_context_and_switch(logged_in: Page, user, console_errors):
    page = logged_in
    console_errors.allow("status of 400")
    page.fill("#context-name", "Home")
    page.press("#context-name", "Enter")
    expect(page.locator("#context-list [aria-current=true]")).to_have_text("Home")
    assert Context.objects.filter(user=user, name="Home").exists()
    page.fill("#context-name", "Home")
    page.press("#context-name", "Enter")
    expect(page.locator("#notice")).to_be_visible()  # a duplicate name is a 400, shown


def test_phone_width_stacks_the_panels(logged_in: Page):
    page = logged_in
    page.set_viewport_size({"width": 390, "height": 844})
    contexts = page.locator(".panel--contexts").bounding_box()
    chat = page.locator(".panel--chat").bounding_box()
    side = page.locator(".panel--side").bounding_box()
    assert contexts["y"] < chat["y"] < side["y"]
    assert abs(contexts["x"] - chat["x"]) < 2 and chat["width"] > 300


# --- The SSE parser, in the browser ------------------------------------------------------------

PARSER_CASES = r"""async () => {
    const script = document.querySelector('script[type=module]');
    const { SSEParser, readEvents } = await import(new URL('sse.js', script.src));
    const collect = (chunks) => {
        const events = [], retries = [], comments = [];
        const p = new SSEParser((e) => events.push(e),
            { onRetry: (ms) => retries.push(ms), onComment: (c) => comments.push(c) });
        for (const c of chunks) p.push(c);
        p.end();
        return { events, retries, comments };
    };
    const whole = 'retry: 2000\n\n: keep-alive\n\nid: 1\nevent: metadata\ndata: {"a":1}\n\n'
        + 'id: 7\r\nevent: chunk\r\ndata: line one\r\ndata: line two\r\n\r\n'
        + 'data:no space\r\rid\nevent: chunk\ndata: x\n\n'
        + 'event: ignored-no-data\n\n'
        + 'id: 9\nevent: done\ndata: end\n\nid: 10\nevent: chunk\ndata: unfinished\n';
    const results = {};
    results.whole = collect(['\ufeff' + whole]);
    results.bytewise = collect(Array.from('\ufeff' + whole));
    // CR at the end of one chunk, LF at the start of the next: one line ending.
    results.crlf = collect(['id: 3\r', '\nevent: chunk\r', '\ndata: a\r', '\n\r', '\n']);
    // A multi-byte character split across network chunks, through readEvents.
    const bytes = new TextEncoder().encode(
        'id: 5\nevent: chunk\ndata: {"c":"h\u00e9 \ud83d\ude00"}\n\n');
    const pieces = [bytes.slice(0, 27), bytes.slice(27, 33), bytes.slice(33, 37), bytes.slice(37)];
    const reader = { i: 0, async read() {
        return this.i < pieces.length ? { value: pieces[this.i++], done: false } : { done: true };
    }, async cancel() {} };
    results.utf8 = [];
    for await (const e of readEvents(reader)) results.utf8.push(e);
    return results;
}"""


def test_sse_parser_handles_the_wire_format(logged_in: Page):
    results = logged_in.evaluate(PARSER_CASES)
    expected = [
        {"type": "metadata", "data": '{"a":1}', "id": "1"},
        {"type": "chunk", "data": "line one\nline two", "id": "7"},
        {"type": "message", "data": "no space", "id": "7"},  # CR alone ends a line too
        {"type": "chunk", "data": "x", "id": ""},  # a bare "id" resets it
        {"type": "done", "data": "end", "id": "9"},
    ]
    for name in ("whole", "bytewise"):
        assert results[name]["events"] == expected, name
        assert results[name]["retries"] == [2000]
        assert results[name]["comments"] == ["keep-alive"]
    assert results["crlf"]["events"] == [{"type": "chunk", "data": "a", "id": "3"}]
    assert results["utf8"] == [{"type": "chunk", "data": '{"c":"h\u00e9 \U0001f600"}', "id": "5"}]


def test_the_api_refuses_a_session_write_without_csrf(logged_in: Page, server):
    cookies = {c["name"]: c["value"] for c in logged_in.context.cookies()}
    response = httpx.post(
        f"{server.url}/api/v1/contexts/",
        json={"name": "x"},
        cookies={"sessionid": cookies["sessionid"]},
    )
    assert response.status_code == 403
