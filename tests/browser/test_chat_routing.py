"""The model picker and the failover notice on the chat page (docs/api.md#the-chat-page).

The browser tests' daphne has two mock routes (tests/browser/conftest.py): ``mock:mock-1``
first, ``mock:mock-2`` after it, both allowed to the chat body's ``model``.
"""

from __future__ import annotations

import json

from playwright.sync_api import Page, expect

from tests.browser.conftest import login
from tests.browser.test_chat_page import LAST_REPLY, last_reply_id, send, stored_reply


def turn_bodies(page: Page) -> list[dict]:
    bodies: list[dict] = []
    page.on(
        "request",
        lambda r: (
            bodies.append(json.loads(r.post_data or "{}"))
            if r.url.endswith("/api/v1/conversations/stream")
            else None
        ),
    )
    return bodies


def test_the_model_picker_offers_the_allowed_models_and_sends_the_choice(logged_in: Page):
    page = logged_in
    bodies = turn_bodies(page)
    picker = page.locator("#model-picker")
    expect(picker).to_be_visible()
    options = picker.locator("option")
    expect(options).to_have_count(2)
    assert [o.get_attribute("data-route") for o in options.all()] == ["mock:mock-1", "mock:mock-2"]
    # The default route is preselected, and a turn on it names no model.
    send(page, "Hello there")
    expect(page.locator(LAST_REPLY)).to_have_attribute("data-status", "complete", timeout=20_000)
    expect(page.locator(f"{LAST_REPLY} >> .message__model")).to_have_text("mock:mock-1")
    assert "model" not in bodies[-1]

    picker.select_option(label="mock:mock-2")
    send(page, "And with the other model")
    expect(page.locator(LAST_REPLY)).to_have_attribute("data-status", "complete", timeout=20_000)
    assert bodies[-1]["model"] == "mock:mock-2"
    expect(page.locator(f"{LAST_REPLY} >> .message__model")).to_have_text("mock:mock-2")
    reply = stored_reply(last_reply_id(page))
    assert (reply.provider, reply.model) == ("mock", "mock-2")

    # Stored replies show the route that wrote them after a reload too.
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    routes = page.locator(".message--assistant .message__model").all_text_contents()
    assert routes == ["mock:mock-1", "mock:mock-2"]


def test_a_failover_is_noted_on_the_reply(logged_in: Page):
    page = logged_in
    send(page, "hello [[mock:fail-model:mock-1]]")
    reply = page.locator(LAST_REPLY)
    expect(reply).to_have_attribute("data-status", "complete", timeout=20_000)
    note = reply.locator(".message__note")
    expect(note).to_contain_text("mock:mock-1")
    expect(note).to_contain_text("mock:mock-2")
    expect(note).to_contain_text("ai_unavailable")
    expect(reply.locator(".message__model")).to_have_text("mock:mock-2")
    stored = stored_reply(last_reply_id(page))
    assert stored.status == "complete" and stored.model == "mock-2"


def test_the_picker_is_hidden_when_there_is_no_choice(page: Page, server, user, chat_context):
    # The same page against a server that allows one model (its answer rewritten here).
    one = {
        "count": 1,
        "next": None,
        "previous": None,
        "results": [
            {
                "id": "mock:mock-1",
                "provider": "mock",
                "model": "mock-1",
                "default": True,
                "price": None,
            }
        ],
    }
    page.route("**/api/v1/models/", lambda route: route.fulfill(json=one))
    login(page, server.url, user.username)
    expect(page.locator("#model-picker option")).to_have_count(1)  # the list was loaded...
    expect(page.locator("#model-picker")).to_be_hidden()  # ...and offers no choice
    bodies = turn_bodies(page)
    send(page, "Hello there")
    expect(page.locator(LAST_REPLY)).to_have_attribute("data-status", "complete", timeout=20_000)
    assert "model" not in bodies[-1]
