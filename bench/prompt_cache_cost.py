"""What a conversation costs with and without Anthropic prompt caching, at list prices.

Usage::

    .venv/bin/python bench/prompt_cache_cost.py [--model claude-sonnet-4-6] [--turns 20]
        [--user 150] [--reply 400] [--per-turn]

No model is called: each turn's request is built by the Anthropic adapter's own functions
(``build_anthropic_messages``, ``mark_cache_breakpoints``, ``prefix_repeats``, so the
breakpoints are where the product puts them), its tokens are counted from the assumed
sizes, and its cost is ``ai.pricing.cost_of`` at the model's list price from
``ai/fixtures/model_prices.json``.

The cache is modelled as the API documents it: a breakpoint caches the prompt up to it
(if that prefix has at least ``--min-cacheable`` tokens, 1024 for Sonnet); a later request
that starts with a cached prefix reads it at the cache-read rate; the tokens from there to
the request's last breakpoint are written at the cache-write rate (1.25 x input); the
rest is input at the input rate. Turns follow each other within the cache's five
minutes. Without caching every input token is at the input rate. The model's history is
the window of the last ``CHAT_HISTORY_LIMIT`` stored messages (10 by default), so once a
conversation is longer than the window its first messages drop and only the system
prompt repeats: each scenario names its window.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

import django  # noqa: E402

django.setup()

from ai.models import ModelPrice  # noqa: E402
from ai.pricing import cost_of  # noqa: E402
from ai.providers.anthropic import (  # noqa: E402
    _EARLIER_OMITTED,
    build_anthropic_messages,
    mark_cache_breakpoints,
    prefix_repeats,
)
from ai.providers.base import ChatMessage, Usage  # noqa: E402

FIXTURE = ROOT / "ai" / "fixtures" / "model_prices.json"
PLACEHOLDER_TOKENS = 12  # the "earlier messages are omitted" user turn


@dataclass(frozen=True)
class Scenario:
    """One conversation shape: its system prompt size and history window."""

    name: str
    system_tokens: int
    window: int | None


@dataclass
class Totals:
    """A conversation's tokens and costs, summed over its turns."""

    input_tokens: int = 0
    cache_read: int = 0
    cache_write: int = 0
    output_tokens: int = 0
    cost_plain: Decimal = Decimal(0)
    cost_cached: Decimal = Decimal(0)


def load_price(model: str) -> ModelPrice:
    """The fixture's list price of ``model`` (an unsaved :class:`ModelPrice`)."""
    for row in json.loads(FIXTURE.read_text()):
        fields = row["fields"]
        if fields["model"] == model:
            decimals = {k: Decimal(v) for k, v in fields.items() if k.endswith("_per_mtok")}
            return ModelPrice(
                provider=fields["provider"],
                model=model,
                currency=fields["currency"],
                **decimals,
            )
    raise SystemExit(f"no price for {model!r} in {FIXTURE}")


def _tokens_of(text: str, sizes: dict[str, int]) -> int:
    """Tokens of one message as sent (merged messages add up)."""
    return sum(sizes.get(part, PLACEHOLDER_TOKENS) for part in text.split("\n\n"))


def simulate(
    scenario: Scenario,
    *,
    turns: int,
    user_tokens: int,
    reply_tokens: int,
    min_cacheable: int,
    price: ModelPrice,
    per_turn: bool = False,
) -> Totals:
    """Run ``turns`` turns of one conversation and sum what each costs both ways."""
    system = "SYSTEM"
    sizes = {system: scenario.system_tokens, _EARLIER_OMITTED: PLACEHOLDER_TOKENS}
    stored: list[ChatMessage] = []
    cached: set[tuple[str, ...]] = set()
    totals = Totals()
    for turn in range(1, turns + 1):
        sizes[f"u{turn}"] = user_tokens
        sizes[f"a{turn}"] = reply_tokens
        stored.append(ChatMessage("user", f"u{turn}"))
        window = stored if scenario.window is None else stored[-scenario.window :]
        system_text, history = build_anthropic_messages(window, system)
        marked_system, sent = mark_cache_breakpoints(
            system_text,
            history,
            mark_prefix=prefix_repeats(len(window), scenario.window),
        )
        blocks = [(system, sizes[system], isinstance(marked_system, list))]
        for message in sent:
            content = message["content"]
            text = content if isinstance(content, str) else content[0]["text"]
            key = f"{message['role']}:{text}"
            blocks.append((key, _tokens_of(text, sizes), not isinstance(content, str)))
        keys = [key for key, _, _ in blocks]
        ends = []  # (prefix length in blocks, prefix tokens) at each breakpoint
        running = 0
        for index, (_, tokens, marked) in enumerate(blocks):
            running += tokens
            if marked:
                ends.append((index + 1, running))
        total_input = running
        read = max(
            (
                sum(t for _, t, _ in blocks[:n])
                for n in range(1, len(blocks) + 1)
                if tuple(keys[:n]) in cached
            ),
            default=0,
        )
        written_to = 0
        for n, tokens in ends:
            if tokens >= min_cacheable:
                cached.add(tuple(keys[:n]))
                written_to = max(written_to, tokens)
        write = max(0, written_to - read)
        with_cache = Usage(
            input_tokens=total_input,
            output_tokens=reply_tokens,
            cache_read_tokens=read,
            cache_write_tokens=write,
        )
        without = Usage(input_tokens=total_input, output_tokens=reply_tokens)
        cost_cached, cost_plain = cost_of(with_cache, price), cost_of(without, price)
        totals.input_tokens += total_input
        totals.cache_read += read
        totals.cache_write += write
        totals.output_tokens += reply_tokens
        totals.cost_plain += cost_plain
        totals.cost_cached += cost_cached
        if per_turn:
            print(
                f"  {scenario.name} turn {turn:2}: input {total_input:6} read {read:6} "
                f"write {write:6}  {cost_plain} -> {cost_cached}"
            )
        stored.append(ChatMessage("assistant", f"a{turn}"))
    return totals


def main() -> None:
    """Print the table (see the module's docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="claude-sonnet-4-6")
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument("--user", type=int, default=150, help="tokens per user message")
    parser.add_argument("--reply", type=int, default=400, help="tokens per reply")
    parser.add_argument("--min-cacheable", type=int, default=1024)
    parser.add_argument("--per-turn", action="store_true")
    args = parser.parse_args()
    price = load_price(args.model)
    scenarios = [
        Scenario("2,000-token system prompt, window of 10 (default)", 2000, 10),
        Scenario("2,000-token system prompt, whole history", 2000, None),
        Scenario("300-token system prompt, window of 10 (default)", 300, 10),
        Scenario("300-token system prompt, whole history", 300, None),
    ]
    print(
        f"{args.model} at {price.input_per_mtok} in / {price.output_per_mtok} out / "
        f"{price.cache_read_per_mtok} cache read / {price.cache_write_per_mtok} cache write "
        f"{price.currency} per million tokens; {args.turns} turns, {args.user} tokens per "
        f"user message, {args.reply} per reply"
    )
    print()
    print(
        "| conversation | input tokens | read from cache | written to cache "
        "| without | with | saved |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for scenario in scenarios:
        t = simulate(
            scenario,
            turns=args.turns,
            user_tokens=args.user,
            reply_tokens=args.reply,
            min_cacheable=args.min_cacheable,
            price=price,
            per_turn=args.per_turn,
        )
        saved = (1 - t.cost_cached / t.cost_plain) * 100 if t.cost_plain else Decimal(0)
        print(
            f"| {scenario.name} | {t.input_tokens:,} | {t.cache_read:,} | {t.cache_write:,} "
            f"| ${t.cost_plain:.4f} | ${t.cost_cached:.4f} | {saved:.0f}% |"
        )


if __name__ == "__main__":
    main()
