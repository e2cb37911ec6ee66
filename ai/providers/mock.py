"""The offline mock provider: no network, deterministic, good enough for a first try.

Over 350 lines on purpose: the test hooks ([[mock:...]]) live with the replies they shape.

Replies type themselves at ``MOCK_TOKEN_DELAY_MS`` per word-sized delta (spaces kept,
so the deltas concatenate to the reply), name the context taken from the system prompt
("You are an assistant for the user's X context") and acknowledge the tasks the user
mentioned. Usage is counted with :func:`ai.providers.base.estimate_tokens` (the mock
"knows" its counts, so ``estimated`` is false). A reply longer than
``max_output_tokens`` deltas is cut there with ``finish_reason="length"``.

Flow extraction is rule based: the user messages of the delimited transcript (see
``flows.extraction.render_transcript``) are searched for "I need to ...", "I have to
...", "I've got to ...", "I must ...", "I should ...", "remind me to ...", "don't forget
to ...", "todo: ..." (to the end of the sentence); "X and Y" / "X, Y" is split into two
tasks when Y has at least two words ("book a flight and call the client", but not "call
Tom and Jerry"). "urgent", "asap", "important", "critical" in the sentence make a task
high priority, "no rush", "low priority", "whenever" low, else medium; "today",
"tomorrow", "next week", "on/by/this/next <weekday>" (the next such day) set a due date
relative to the date the system prompt gives ("Today's date is YYYY-MM-DD"; no date
there: no due dates). The same rules pick the tasks the chat reply acknowledges.

Changes to the listed flows (the ``<flows>`` block before the transcript, one JSON object
per line; see ``flows.extraction.render_flows``) come from the LAST user message only:
"I booked ...", "I did ...", "I've done ...", "I finished ...", "I completed ...", "done
with ...", "... is done", or a sentence starting with such a verb ("Booked the flight")
mark the matching open flow done; "move / push / postpone / reschedule / change ... to
<weekday>" ("to Friday", "to next Friday", also "to tomorrow", "to next week", or "to
YYYY-MM-DD") gives the matching open flow that date (a weekday: the next such day after
today). A flow matches when it shares the most words (stop words left out,
"booked"/"booking" read as "book") with the words after the phrase; a tie or no shared
word changes nothing.

Test and demo hooks (only this provider, only in the LAST user message; they are
markers in the text and stay in it):

``[[mock:error:<code>]]``
    raise that error before the first delta; ``<code>`` is one of ``ai_rate_limited``
    (with ``retry_after`` 1 in its data), ``ai_timeout``, ``ai_unavailable``,
    ``ai_error``; anything else raises ``ai_error``.
``[[mock:fail-model:<model>]]``
    raise ``ai_unavailable`` before the first delta when this provider serves ``<model>``
    (a route ``mock:<model>``), so a turn fails over to its next route; other models answer.
``[[mock:fail-midway]]``
    yield a few deltas, then raise :class:`ai.errors.AIStreamIncomplete`.
``[[mock:slow:<ms>]]``
    use ``<ms>`` milliseconds per delta instead of ``MOCK_TOKEN_DELAY_MS``.
``[[mock:echo]]``
    the reply is the last user message's text verbatim (hook marker included), so a
    test can check that newlines, quotes, emoji and ``data:`` lines round-trip.
``[[mock:long:<n>]]``
    a reply of ``n`` word deltas (at most 100,000; still cut at ``max_output_tokens``).
``[[mock:extract-fail]]`` (anywhere in the transcript)
    ``extract_structured`` raises :class:`ai.errors.AIUnavailable`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ai.errors import AIError, AIRateLimited, AIStreamIncomplete, AITimeout, AIUnavailable
from ai.prompts import model_prompt
from ai.providers.base import (
    ChatMessage,
    StreamEnd,
    StructuredResult,
    Usage,
    estimate_messages_tokens,
    estimate_tokens,
)

# --- test hooks --------------------------------------------------------------------------
_HOOK_ERROR = re.compile(r"\[\[mock:error:([a-z_]+)\]\]")
_HOOK_FAIL_MIDWAY = "[[mock:fail-midway]]"
_HOOK_FAIL_MODEL = re.compile(r"\[\[mock:fail-model:([\w.\-]+)\]\]")
_HOOK_SLOW = re.compile(r"\[\[mock:slow:(\d{1,6})\]\]")
_HOOK_ECHO = "[[mock:echo]]"
_HOOK_LONG = re.compile(r"\[\[mock:long:(\d{1,9})\]\]")
_HOOK_EXTRACT_FAIL = "[[mock:extract-fail]]"
_HOOK_ERRORS: dict[str, type[AIError]] = {
    "ai_rate_limited": AIRateLimited,
    "ai_timeout": AITimeout,
    "ai_unavailable": AIUnavailable,
    "ai_error": AIError,
}
_FAIL_MIDWAY_AFTER = 3
_LONG_MAX = 100_000
_LONG_WORDS = (
    "lorem",
    "ipsum",
    "dolor",
    "sit",
    "amet",
    "consectetur",
    "adipiscing",
    "elit",
    "sed",
    "do",
    "eiusmod",
    "tempor",
    "incididunt",
    "ut",
    "labore",
    "et",
    "dolore",
    "magna",
    "aliqua",
)

# --- reading the prompt -------------------------------------------------------------------
_CONTEXT_NAME = re.compile(r"assistant for the user's (.+?) context", re.DOTALL)
_TODAY = re.compile(r"date is (\d{4}-\d{2}-\d{2})\b|\b(\d{4}-\d{2}-\d{2})\b")
_USER_BLOCK = re.compile(r'<message role="user">\n?(.*?)\n?</message>', re.DOTALL)
_DELTA = re.compile(r"\s*\S+|\s+")

_HOOK_ANY = re.compile(r"\[\[mock:[^\]]*\]\]")
_HOOK_TITLE_FAIL = "[[mock:title-fail]]"
_TITLE_WORDS = 6


def mock_title(transcript: str) -> str:
    """The mock's title: the first six words of the first user message (hooks and
    punctuation at the ends removed), first letter upper case; deterministic."""
    users = _USER_BLOCK.findall(transcript)
    words = _HOOK_ANY.sub(" ", users[0] if users else transcript).split()[:_TITLE_WORDS]
    title = " ".join(words).strip(" .,!?;:")
    return title[:1].upper() + title[1:]


def _title_result(system: str, transcript: str) -> StructuredResult:
    if _HOOK_TITLE_FAIL in transcript:
        raise AIUnavailable()
    title = mock_title(transcript)
    return StructuredResult(
        payload={"title": title},
        usage=Usage(
            input_tokens=estimate_tokens(system) + estimate_tokens(transcript),
            output_tokens=estimate_tokens(title) + 4,
        ),
    )


# --- rule-based task finding ---------------------------------------------------------------
_TRIGGER = re.compile(
    r"(?:\b(?:i\s+(?:really\s+)?(?:need|have|got)\s+to|i've\s+got\s+to|i\s+must|"
    r"i\s+should|remind\s+me\s+to|(?:don't|do\s+not|dont)\s+(?:let\s+me\s+)?forget\s+to|"
    r"i'll\s+have\s+to)\s+|\bto-?do\s*:\s*)",
    re.IGNORECASE,
)
_SENTENCE_END = re.compile(r"[.!?;\n]")
_SPLIT = re.compile(r"\s*(?:,\s*(?:and\s+|then\s+)?|\s+and\s+(?:then\s+)?|\s+then\s+)", re.I)
_HIGH = re.compile(r"\b(urgent(?:ly)?|asap|as soon as possible|important|critical)\b", re.I)
_LOW = re.compile(r"\b(low priority|no rush|whenever|someday|eventually)\b", re.I)
_WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_DUE = re.compile(
    r"\b(today|tonight|tomorrow|next week|(?:on|by|this|next)\s+(" + "|".join(_WEEKDAYS) + r"))\b",
    re.IGNORECASE,
)
# Words that describe when or how urgent, not what: removed from titles.
_NOISE = re.compile(
    r"\s*\b(?:(?:it'?s\s+|it\s+is\s+)?(?:very\s+|really\s+|super\s+)?"
    r"(?:urgent(?:ly)?|asap|as soon as possible|important|critical)|"
    r"low priority|no rush|today|tonight|tomorrow|next week|"
    r"(?:on|by|this|next)\s+(?:" + "|".join(_WEEKDAYS) + r")|please)\b[,!]?",
    re.IGNORECASE,
)
_MAX_TASKS = 10

# --- rule-based changes to listed flows ----------------------------------------------------
_FLOWS_BLOCK = re.compile(r"<flows>\n(.*?)\n</flows>", re.DOTALL)
_DONE_VERBS = (
    "booked|called|paid|sent|bought|wrote|fixed|renewed|emailed|answered|submitted|"
    "cleaned|watered|cancelled|canceled|ordered|mailed|signed|returned|picked up"
)
_DONE = re.compile(
    r"(?:\b(?:i(?:'ve|\s+have)?\s+(?:already\s+|just\s+|finally\s+)?"
    r"(?:(did|done|finished|completed)|(" + _DONE_VERBS + r"))\b|"
    r"(?:i'm\s+|i\s+am\s+)?done\s+with\b)|"
    r"(?:^|(?<=[.!?;\n]))\s*(?:(?:just|already|finally)\s+)?(" + _DONE_VERBS + r")\b)"
    r"([^.!?;\n]*)",
    re.IGNORECASE,
)
_IS_DONE = re.compile(
    r"([^.!?;\n]*?)\s+(?:is|are|has been|have been)\s+(?:done|finished|booked|completed)\b",
    re.I,
)
_ISO_DAY = r"\d{4}-\d{2}-\d{2}"
_MOVE = re.compile(
    r"\b(?:move|push|postpone|reschedule|shift|change)\s+([^.!?;\n]+?)\s+(?:to|for|until)\s+"
    r"(?:(?:on|this)\s+)?(today|tomorrow|next week|"
    + _ISO_DAY
    + r"|(?:next\s+)?(?:"
    + "|".join(_WEEKDAYS)
    + r"))\b",
    re.IGNORECASE,
)
_STOP_WORDS = frozenset(
    re.findall(
        r"\S+",
        "a an the my our your his her their this that these those it to with for of on in at "
        "and or all already just also",
    )
)
_WORD = re.compile(r"[a-z0-9']+")


@dataclass(frozen=True, slots=True)
class FoundTask:
    """A task the rules found in a user's text."""

    title: str
    priority: str
    due_date: dt.date | None
    sentence: str


def _due(sentence: str, today: dt.date | None) -> dt.date | None:
    if today is None:
        return None
    match = _DUE.search(sentence)
    if not match:
        return None
    word = match.group(1).lower()
    if word in ("today", "tonight"):
        return today
    if word == "tomorrow":
        return today + dt.timedelta(days=1)
    if word == "next week":
        return today + dt.timedelta(days=7)
    weekday = _WEEKDAYS.index(match.group(2).lower())
    days = (weekday - today.weekday()) % 7 or 7  # the next such day after today
    return today + dt.timedelta(days=days)


def _clean_title(text: str) -> str:
    text = _NOISE.sub("", text)
    text = re.sub(r"\s+", " ", text).strip(" ,;:-")
    text = re.sub(r"^(?:also|then|and)\s+", "", text, flags=re.I)
    return text[:1].upper() + text[1:] if text else ""


def find_tasks(text: str, today: dt.date | None = None) -> list[FoundTask]:
    """Tasks a user's text commits to, by the rules in the module docstring (at most 10)."""
    tasks: list[FoundTask] = []
    seen: set[str] = set()
    for trigger in _TRIGGER.finditer(text):
        rest = text[trigger.end() :]
        end = _SENTENCE_END.search(rest)
        clause = rest[: end.start()] if end else rest
        sentence_start = max(text.rfind(c, 0, trigger.start()) for c in ".!?;\n")
        sentence = text[sentence_start + 1 : trigger.end() + len(clause)].strip()
        # Stop at the next trigger in the same sentence ("... and remind me to ...").
        nested = _TRIGGER.search(clause)
        if nested:
            clause = clause[: nested.start()]
        pieces: list[str] = []
        for piece in _SPLIT.split(_NOISE.sub("", clause)):
            if not piece.strip():
                continue
            if pieces and len(piece.split()) < 2:
                pieces[-1] += " and " + piece  # "call Tom and Jerry" stays one task
            else:
                pieces.append(piece)
        priority = (
            "high" if _HIGH.search(sentence) else "low" if _LOW.search(sentence) else "medium"
        )
        due = _due(sentence, today)
        for piece in pieces:
            title = _clean_title(piece)[:200].strip()
            if len(title) < 3 or title.casefold() in seen:
                continue
            seen.add(title.casefold())
            tasks.append(FoundTask(title, priority, due, sentence[:500]))
            if len(tasks) >= _MAX_TASKS:
                return tasks
    return tasks


def _stem(word: str) -> str:
    for suffix in ("ing", "ed", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def _words(text: str) -> set[str]:
    return {_stem(w) for w in _WORD.findall(text.casefold()) if w not in _STOP_WORDS}


def _matching_flow(phrase: str, flows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The open flow sharing the most words with ``phrase`` (none on a tie or no overlap)."""
    wanted = _words(phrase)
    scored = sorted(
        ((len(wanted & _words(str(f.get("title", "")))), i) for i, f in enumerate(flows)),
        reverse=True,
    )
    if not scored or scored[0][0] == 0 or (len(scored) > 1 and scored[1][0] == scored[0][0]):
        return None
    return flows[scored[0][1]]


def _listed_flows(transcript: str) -> list[dict[str, Any]]:
    """The open flows of the transcript's ``<flows>`` block (none without one)."""
    block = _FLOWS_BLOCK.search(transcript.split("<transcript>", 1)[0])
    flows: list[dict[str, Any]] = []
    for line in block.group(1).splitlines() if block else []:
        try:
            flow = json.loads(line)
        except ValueError:
            continue
        if isinstance(flow, dict) and flow.get("status", "open") == "open" and flow.get("id"):
            flows.append(flow)
    return flows


def find_updates(
    text: str, flows: list[dict[str, Any]], today: dt.date | None = None
) -> list[dict[str, Any]]:
    """Changes ``text`` makes to the listed open ``flows``, by the rules in the module
    docstring: ``[{"id", "changes": {...}}]`` with every field of the schema (``None`` for
    what does not change)."""
    changes: dict[str, dict[str, Any]] = {}

    def change(phrase: str, **values: Any) -> None:
        flow = _matching_flow(phrase, flows)
        if flow is not None:
            changes.setdefault(str(flow["id"]), {}).update(values)

    for match in _DONE.finditer(text):
        verb = match.group(2) or match.group(3) or ""
        change(f"{verb} {match.group(4)}", status="done")
    for match in _IS_DONE.finditer(text):
        change(match.group(1), status="done")
    for match in _MOVE.finditer(text):
        when = match.group(2)
        if re.fullmatch(_ISO_DAY, when):
            try:
                due: dt.date | None = dt.date.fromisoformat(when)
            except ValueError:
                continue
        else:
            due = _due(f"on {when}" if when.lower() in _WEEKDAYS else when, today)
        if due is not None:
            change(match.group(1), due_date=due.isoformat())
    empty = {"status": None, "title": None, "priority": None, "due_date": None}
    return [{"id": fid, "changes": {**empty, **values}} for fid, values in changes.items()]


def _today_from(system: str) -> dt.date | None:
    """The date the prompt gives ("Today's date is 2025-01-06"), else any ISO date in it."""
    matches = list(_TODAY.finditer(system))
    preferred = [m.group(1) for m in matches if m.group(1)] or [m.group(2) for m in matches]
    for value in preferred:
        try:
            return dt.date.fromisoformat(value)
        except ValueError:
            continue
    return None


def _deltas(text: str) -> list[str]:
    """Word-sized deltas that concatenate to ``text`` exactly."""
    return _DELTA.findall(text)


def _join(titles: list[str]) -> str:
    lowered = [t[:1].lower() + t[1:] for t in titles]
    if len(lowered) == 1:
        return lowered[0]
    return ", ".join(lowered[:-1]) + " and " + lowered[-1]


def compose_reply(*, context_name: str, user_text: str) -> str:
    """The mock's reply to ``user_text`` in a context (deterministic, a few sentences)."""
    where = f"your {context_name} context" if context_name else "this context"
    tasks = find_tasks(user_text)
    if tasks:
        count = "one task" if len(tasks) == 1 else f"{len(tasks)} tasks"
        return (
            f"Got it! I noted {count} for {where}: {_join([t.title for t in tasks[:5]])}. "
            "They will show up as flows beside this chat, where you can set their priority "
            "and mark them done. Is there anything else you need to plan?"
        )
    if not user_text.strip():
        return f"Hello! I am the offline mock assistant for {where}. What is on your mind?"
    return (
        f"Thanks for your message! I am the offline mock assistant for {where}, so my "
        "answers are simple, but the chat, the streaming and the flows work like the real "
        "thing. Tell me what you need to do, for example: I need to book a flight and call "
        "the client tomorrow, and I will keep track of it."
    )


class MockProvider:
    """A deterministic provider that needs no network and no key."""

    name = "mock"

    def __init__(self, *, model: str = "mock-1", token_delay_ms: float = 30.0) -> None:
        self.model = model
        self.token_delay_ms = max(0.0, float(token_delay_ms))

    def __repr__(self) -> str:
        return f"MockProvider(model={self.model!r}, token_delay_ms={self.token_delay_ms})"

    async def stream_reply(
        self,
        *,
        messages: Sequence[ChatMessage],
        system: str,
        max_output_tokens: int,
    ) -> AsyncIterator[str | StreamEnd]:
        """Stream the mock reply: word deltas at the configured pace, then a StreamEnd.

        It reads the prompt the real adapters send (:func:`ai.prompts.model_prompt`):
        the reply answers the last user message, never a client's context.
        """
        prompt, history = model_prompt(system, messages)
        user_text = next((m.content for m in reversed(messages) if m.role == "user"), "")
        delay_ms = self.token_delay_ms
        error = _HOOK_ERROR.search(user_text)
        if error:
            error_class = _HOOK_ERRORS.get(error.group(1), AIError)
            if error_class is AIRateLimited:
                raise AIRateLimited(data={"retry_after": 1}, headers={"Retry-After": "1"})
            raise error_class()
        if any(m.group(1) == self.model for m in _HOOK_FAIL_MODEL.finditer(user_text)):
            raise AIUnavailable()
        slow = _HOOK_SLOW.search(user_text)
        if slow:
            delay_ms = float(slow.group(1))
        long = _HOOK_LONG.search(user_text)
        if _HOOK_ECHO in user_text:
            deltas = _deltas(user_text)
        elif long:
            count = min(int(long.group(1)), _LONG_MAX)
            deltas = [(" " if i else "") + _LONG_WORDS[i % len(_LONG_WORDS)] for i in range(count)]
        else:
            match = _CONTEXT_NAME.search(system)
            context_name = match.group(1).strip() if match else ""
            deltas = _deltas(compose_reply(context_name=context_name, user_text=user_text))
        fail_midway = _HOOK_FAIL_MIDWAY in user_text
        finish_reason: Literal["stop", "length"] = "stop"
        if len(deltas) > max_output_tokens:
            deltas = deltas[: max(0, max_output_tokens)]
            finish_reason = "length"
        delay = delay_ms / 1000
        for index, delta in enumerate(deltas):
            if fail_midway and index == _FAIL_MIDWAY_AFTER:
                raise AIStreamIncomplete()
            if delay:
                await asyncio.sleep(delay)
            elif index % 8 == 7:
                await asyncio.sleep(0)  # let other tasks run even at full speed
            yield delta
        if fail_midway:
            raise AIStreamIncomplete()
        yield StreamEnd(
            finish_reason=finish_reason,
            usage=Usage(
                input_tokens=estimate_messages_tokens(history, prompt),
                output_tokens=estimate_tokens("".join(deltas)),
            ),
        )

    async def extract_structured(
        self,
        *,
        system: str,
        transcript: str,
        schema: dict[str, Any],
        schema_name: str,
    ) -> StructuredResult:
        """Rule-based extraction from the transcript's user messages and its listed flows
        (``{"flows": [...], "updated": [...]}``, with ``"title"`` (:func:`mock_title`)
        when the schema asks for one, unless the transcript holds the title-fail hook);
        for a ``conversation_title`` schema, :func:`mock_title`."""
        if schema_name == "conversation_title":
            return _title_result(system, transcript)
        if _HOOK_EXTRACT_FAIL in transcript:
            raise AIUnavailable()
        await asyncio.sleep(0)
        today = _today_from(system)
        user_texts = _USER_BLOCK.findall(transcript) if "<message" in transcript else [transcript]
        flows: list[dict[str, Any]] = []
        seen: set[str] = set()
        for text in user_texts:
            for task in find_tasks(text, today):
                if task.title.casefold() in seen or len(flows) >= _MAX_TASKS:
                    continue
                seen.add(task.title.casefold())
                flows.append(
                    {
                        "title": task.title,
                        "description": f"From your message: {task.sentence}"[:2000],
                        "priority": task.priority,
                        "due_date": task.due_date.isoformat() if task.due_date else None,
                    }
                )
        listed = _listed_flows(transcript)
        last_user = user_texts[-1] if user_texts else ""
        updated = find_updates(last_user, listed, today) if listed else []
        payload: dict[str, Any] = {"flows": flows, "updated": updated}
        if "title" in schema.get("properties", {}) and _HOOK_TITLE_FAIL not in transcript:
            payload["title"] = mock_title(transcript)
        return StructuredResult(
            payload=payload,
            usage=Usage(
                input_tokens=estimate_tokens(system) + estimate_tokens(transcript),
                output_tokens=estimate_tokens(json.dumps(payload)),
            ),
        )
