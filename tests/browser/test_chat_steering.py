"""Steering a conversation from the chat page, in Chromium against a real daphne
(docs/api.md#the-chat-page): regenerate, edit, the title, search, export, flows the
conversation updates and their history.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from playwright.sync_api import Page, expect

from conversations.models import Conversation, Message
from flows.models import Flow
from tests.browser.test_chat_page import (
    LAST_REPLY,
    last_reply_id,
    record_resume,
    reply_text,
    send,
    stored_reply,
    wait_reply_length,
    wait_reply_status,
)


def reply_article(page: Page, message_id: str):
    return page.locator(f".message[data-message-id='{message_id}']")


def new_conversation(page: Page) -> None:
    page.click("#new-conversation")
    expect(page.locator(".message")).to_have_count(0)


# --- Regenerate -----------------------------------------------------------------------------


def test_regenerate_streams_a_new_reply_in_place_of_the_last(logged_in: Page):
    page = logged_in
    send(page, "Hello there")
    wait_reply_status(page, "complete")
    first_id = last_reply_id(page)
    regenerate = page.locator(LAST_REPLY).get_by_role("button", name="Regenerate")
    expect(regenerate).to_be_visible()
    # Only the last reply offers it, and user messages offer Edit instead.
    expect(page.get_by_role("button", name="Regenerate")).to_have_count(1)

    regenerate.click()
    wait_reply_status(page, "complete")
    second_id = last_reply_id(page)
    assert second_id != first_id
    expect(page.locator(".message")).to_have_count(2)  # the old reply left the view
    expect(reply_article(page, first_id)).to_have_count(0)
    old, new = stored_reply(first_id), stored_reply(second_id)
    assert old.superseded and not new.superseded
    assert new.conversation_id == old.conversation_id
    assert reply_text(page) == new.content

    # After a reload the conversation shows the new reply only.
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    expect(page.locator(".message")).to_have_count(2)
    expect(reply_article(page, second_id)).to_have_count(1)


def test_a_regenerated_reply_can_be_stopped_and_resumed(logged_in: Page):
    page = logged_in
    resumes: list[str] = []
    page.on("request", lambda r: record_resume(resumes, r.url))
    send(page, "[[mock:long:400]] a long story")
    wait_reply_length(page, 30)
    page.click("#stop")
    wait_reply_status(page, "cancelled")
    first_id = last_reply_id(page)

    # Regenerate the stopped reply; while it streams there is nothing to regenerate or edit.
    page.locator(LAST_REPLY).get_by_role("button", name="Regenerate").click()
    wait_reply_length(page, 60)
    expect(page.get_by_role("button", name="Regenerate")).to_have_count(0)
    expect(page.locator(".message__actions:visible")).to_have_count(0)
    second_id = last_reply_id(page)
    assert second_id != first_id

    # A reload mid-reply resumes the regenerated reply through EventSource...
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    wait_reply_length(page, 120)
    assert any(f"/messages/{second_id}/stream" in url for url in resumes)
    # ...and Stop still stops it.
    page.click("#stop")
    wait_reply_status(page, "cancelled")
    stored = stored_reply(second_id)
    assert stored.status == "cancelled" and stored.finish_reason == "cancelled"
    assert reply_text(page) == stored.content
    assert stored_reply(first_id).superseded


# --- Edit ---------------------------------------------------------------------------------


def test_edit_a_user_message_resends_it_and_supersedes_what_followed(logged_in: Page):
    page = logged_in
    send(page, "Hello there")
    wait_reply_status(page, "complete")
    send(page, "Another question")
    wait_reply_status(page, "complete")
    first_user = page.locator(".message--user").first
    first_user_id = first_user.get_attribute("data-message-id")
    assert first_user_id, "the user message got no id from the stream's metadata"
    old_ids = [a.get_attribute("data-message-id") for a in page.locator(".message").all()]

    first_user.get_by_role("button", name="Edit").click()
    editor = first_user.locator("textarea")
    expect(editor).to_have_value("Hello there")
    # Cancel puts the message back untouched.
    first_user.get_by_role("button", name="Cancel").click()
    expect(first_user.locator("textarea")).to_have_count(0)
    expect(first_user.locator(".message__body")).to_have_text("Hello there")

    first_user.get_by_role("button", name="Edit").click()
    first_user.locator("textarea").fill("I need to water the plants")
    first_user.get_by_role("button", name="Send").click()
    wait_reply_status(page, "complete")

    # The view: the edited message and its new reply; the old four are gone.
    expect(page.locator(".message")).to_have_count(2)
    expect(page.locator(".message--user .message__body")).to_have_text("I need to water the plants")
    expect(page.locator(LAST_REPLY)).to_contain_text("water the plants")
    for old_id in old_ids:
        assert Message.objects.get(pk=old_id).superseded, old_id
    new_user_id = page.locator(".message--user").first.get_attribute("data-message-id")
    assert new_user_id and new_user_id not in old_ids
    assert Message.objects.get(pk=new_user_id).content == "I need to water the plants"
    # The edit made a flow, like any turn.
    expect(page.locator("#flow-list .flow")).to_have_count(1)


# --- Title ------------------------------------------------------------------------------------


def test_the_title_arrives_live_and_can_be_renamed(logged_in: Page):
    page = logged_in
    expect(page.locator("#chat-heading")).to_have_text("New conversation")
    expect(page.locator("#rename")).to_be_hidden()
    send(page, "please plan my trip to Lisbon next month, thanks")
    wait_reply_status(page, "complete")
    # The mock names a conversation after the first six words of its first message.
    expect(page.locator("#chat-heading")).to_have_text("Please plan my trip to Lisbon")
    expect(page.locator("#conversation-list [aria-current=true] .list__title")).to_have_text(
        "Please plan my trip to Lisbon"
    )
    conversation = Conversation.objects.get()
    assert conversation.title == "Please plan my trip to Lisbon"

    page.click("#rename")
    expect(page.locator("#title-input")).to_be_focused()
    page.fill("#title-input", "Lisbon in May")
    page.press("#title-input", "Enter")
    expect(page.locator("#chat-heading")).to_have_text("Lisbon in May")
    expect(page.locator("#conversation-list [aria-current=true] .list__title")).to_have_text(
        "Lisbon in May"
    )
    conversation.refresh_from_db()
    assert conversation.title == "Lisbon in May"
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    expect(page.locator("#chat-heading")).to_have_text("Lisbon in May")


# --- Search -----------------------------------------------------------------------------------


def test_search_opens_the_conversation_at_the_message(logged_in: Page):
    page = logged_in
    send(page, "I need to feed the axolotl on Sunday")
    wait_reply_status(page, "complete")
    target_id = page.locator(".message--user").first.get_attribute("data-message-id")
    # A second, longer conversation is open when we search.
    new_conversation(page)
    send(page, "Something else entirely")
    wait_reply_status(page, "complete")

    page.fill("#search-input", "axolotl")
    page.press("#search-input", "Enter")
    results = page.locator("#search-results .search-result")
    expect(results.first).to_be_visible()
    message_result = page.locator(f"#search-results [data-result-id='{target_id}']")
    expect(message_result).to_have_count(1)
    expect(message_result.locator("mark").first).to_have_text("axolotl", ignore_case=True)
    # The flow "Feed the axolotl" matches too.
    expect(page.locator("#search-results [data-kind=flow]")).to_have_count(1)
    # Snippets are text: the marks are the only elements in them.
    assert page.locator("#search-results .search-result__snippet *:not(mark)").count() == 0

    message_result.click()
    found = page.locator(f".message[data-message-id='{target_id}']")
    expect(found).to_have_class(re.compile(r"\bmessage--found\b"))
    expect(found).to_be_in_viewport()
    assert f"conversation={Message.objects.get(pk=target_id).conversation_id}" in page.url
    expect(page.locator(".message--found")).to_have_count(1)

    # A flow result highlights the flow.
    page.locator("#search-results [data-kind=flow]").click()
    expect(page.locator("#flow-list .flow--found")).to_contain_text("axolotl")


def test_search_with_no_match_says_so(logged_in: Page):
    page = logged_in
    page.fill("#search-input", "nothingmatchesthis")
    page.press("#search-input", "Enter")
    expect(page.locator("#search-status")).to_contain_text("Nothing found")
    expect(page.locator("#search-results .search-result")).to_have_count(0)


# --- Export -----------------------------------------------------------------------------------


def test_export_downloads_markdown_and_json(logged_in: Page):
    page = logged_in
    expect(page.locator("#export")).to_be_hidden()
    send(page, "Hello there, export me")
    wait_reply_status(page, "complete")
    reply = stored_reply(last_reply_id(page))
    expect(page.locator("#export")).to_be_visible()

    with page.expect_download() as info:
        page.click("#export-md")
    markdown = Path(info.value.path()).read_text(encoding="utf-8")
    assert "Hello there, export me" in markdown
    assert reply.content in markdown
    assert info.value.suggested_filename.endswith(".md")

    with page.expect_download() as info:
        page.click("#export-json")
    document = json.loads(Path(info.value.path()).read_text(encoding="utf-8"))
    assert info.value.suggested_filename.endswith(".json")
    text = json.dumps(document)
    assert "Hello there, export me" in text and str(reply.pk) in text


# --- Flows the conversation updates -----------------------------------------------------------


def test_a_flow_marked_done_by_the_conversation_updates_live_with_its_history(
    logged_in: Page, chat_context
):
    page = logged_in
    send(page, "I need to book a flight and call the client")
    wait_reply_status(page, "complete")
    flows = page.locator("#flow-list .flow")
    expect(flows).to_have_count(2)
    flight = Flow.objects.get(context=chat_context, title__icontains="flight")
    item = page.locator(f"#flow-list [data-flow-id='{flight.pk}']")
    expect(item).to_have_attribute("data-status", "open")

    send(page, "I booked the flight.")
    wait_reply_status(page, "complete")
    # No reload: the flows_extracted event's `updated` marks it done in place.
    expect(item).to_have_attribute("data-status", "done")
    expect(item).to_have_attribute("data-updated", "true")
    flight.refresh_from_db()
    assert flight.status == "done"
    call = Flow.objects.get(context=chat_context, title__icontains="call")
    expect(page.locator(f"#flow-list [data-flow-id='{call.pk}']")).to_have_attribute(
        "data-status", "open"
    )

    # Its history: created, then done by the assistant from the conversation.
    item.get_by_role("button", name="History").click()
    events = item.locator(".flow__history .flow-event")
    expect(events).to_have_count(2)
    expect(events.nth(0)).to_have_attribute("data-kind", "created")
    expect(events.nth(1)).to_have_attribute("data-kind", "done")
    expect(events.nth(1)).to_contain_text("assistant")


# --- Retry ------------------------------------------------------------------------------------


def test_retry_after_an_error_regenerates_the_failed_reply(logged_in: Page):
    page = logged_in
    send(page, "[[mock:fail-midway]] tell me")
    wait_reply_status(page, "failed")
    failed_id = last_reply_id(page)
    retry = page.locator(f"{LAST_REPLY} >> .message__error").get_by_role("button", name="Retry")
    expect(retry).to_be_visible()
    # The hook is in the user message, so the new reply fails the same way: what matters
    # is that Retry wrote the reply again in place (no second user message).
    retry.click()
    wait_reply_status(page, "failed")
    assert last_reply_id(page) != failed_id
    expect(page.locator(".message--user")).to_have_count(1)
    expect(page.locator(".message--assistant")).to_have_count(1)
    assert stored_reply(failed_id).superseded
