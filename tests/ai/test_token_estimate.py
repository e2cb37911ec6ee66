# ruff: noqa: E501, RUF001 -- a table of real texts (long lines, full-width punctuation)
"""The token estimator against real token counts (docs/api.md#quota).

The table's counts come from OpenAI's ``cl100k_base`` and ``o200k_base`` BPE encodings as
computed by the ``bpe-openai`` package (0.1.4, PyPI; it embeds both vocabularies, so it
runs offline; see requirements-dev.txt). ``test_table_matches_the_tokenizer`` recomputes
them, so the table cannot drift from the tokenizer. cl100k is the stricter of the two for
non-Latin scripts and emoji; the estimate is held against the larger count.
"""

from __future__ import annotations

import math

import pytest

from ai.providers.base import estimate_tokens

#: (name, text, cl100k_base tokens, o200k_base tokens)
TABLE = [
    ("english_short", "Hello, how are you today?", 7, 7),
    (
        "english_prose",
        "The quick brown fox jumps over the lazy dog. Remember to send the quarterly report to finance before Friday, and book a meeting room for the review.",
        30,
        30,
    ),
    ("english_words", "internationalization responsibilities notwithstanding", 4, 4),
    ("numbers", "Order 48213 shipped on 2026-12-03 at 09:15, total $1,249.99 (VAT 19%).", 32, 31),
    (
        "french",
        "Le café était fermé, alors nous sommes allés à la bibliothèque près de l'église.",
        24,
        19,
    ),
    ("german", "Die Straßenbahnhaltestelle befindet sich gegenüber dem Bahnhofsgebäude.", 21, 17),
    ("russian", "Привет! Как дела? Сегодня мы обсудим планы на следующую неделю.", 31, 17),
    ("greek", "Καλημέρα σας, τι κάνετε σήμερα;", 28, 11),
    ("arabic", "مرحبا بكم في اجتماعنا اليوم، سنناقش خطة المشروع.", 36, 15),
    (
        "japanese",
        "今日は良い天気ですね。散歩に行きましょう。明日の会議の資料を準備してください。",
        44,
        26,
    ),
    ("chinese", "你好，世界！我们今天要讨论人工智能的发展和未来的应用场景。", 31, 18),
    ("chinese_rare", "龘靐齉爩鱻麤𠀀𠀁𪚥", 25, 23),
    (
        "korean",
        "안녕하세요, 반갑습니다. 오늘 날씨가 좋네요. 내일 회의 자료를 준비해 주세요.",
        40,
        24,
    ),
    ("katakana", "コンピューターサイエンスとソフトウェアエンジニアリング", 27, 19),
    ("emoji", "🎉🚀👍😀🔥❤️", 17, 8),
    ("emoji_zwj", "👨\u200d👩\u200d👧\u200d👦 👩🏽\u200d💻 🏳️\u200d🌈 🇩🇪🇯🇵", 48, 33),
    ("emoji_mixed", "Great job team 🎉🎉🎉 ship it 🚀 thanks 🙏", 21, 16),
    ("symbols", "→ ← ↑ ↓ ✓ ✗ • … — “quoted” ©®™ € £ ¥", 19, 19),
    ("python", 'def f(x):\n    return {"a": [x, 1]}\n', 15, 15),
    (
        "python_class",
        'class Flow(models.Model):\n    title = models.CharField(max_length=200)\n\n    def __str__(self) -> str:\n        return f"{self.title!r}"\n',
        34,
        35,
    ),
    (
        "javascript",
        "const xs = items.filter((i) => i.done).map((i) => ({ id: i.id, n: i.n * 2 }));",
        32,
        32,
    ),
    ("json", '{"id": "9b2f", "tags": ["a", "b"], "meta": {"n": 1, "ok": true, "x": null}}', 37, 37),
    (
        "sql",
        "SELECT u.id, COUNT(*) FROM users u JOIN orders o ON o.user_id = u.id WHERE o.total > 100 GROUP BY u.id;",
        30,
        30,
    ),
    ("url", "https://example.com/api/v1/messages/3f2a9c/stream?last_event_id=42&x=%20y", 27, 28),
    ("base64", "aGVsbG8gd29ybGQhIFRoaXMgaXMgYSB0ZXN0IG9mIGJhc2U2NCBlbmNvZGluZy4=", 45, 43),
    ("hex", "0x7f3a9c2e41b8d6f05e1a2b3c4d5e6f708192a3b4", 36, 36),
    ("mixed_cjk_en", "Please translate 我们明天开会 and 会議は明日です into English.", 21, 18),
    ("whitespace", "a\n\n\n    b\t\tc          d\n", 9, 9),
]

#: The estimate may undercount the real count by at most this share, plus this many tokens
#: (very short texts), never more.
MARGIN = 0.10
SLACK = 2

#: Scripts where a quarter of the length would be far too little.
CJK_AND_EMOJI = ("japanese", "chinese", "korean", "katakana", "emoji", "emoji_zwj")


#: Rows the margin does not hold for (see test_rare_ideographs_count_a_token_each_at_least).
KNOWN_LIMITS = ("chinese_rare",)
CHECKED = [row for row in TABLE if row[0] not in KNOWN_LIMITS]


@pytest.mark.parametrize(
    ("name", "text", "cl100k", "o200k"), CHECKED, ids=[row[0] for row in CHECKED]
)
def test_estimate_never_undercounts_by_more_than_a_small_margin(
    name: str, text: str, cl100k: int, o200k: int
) -> None:
    real = max(cl100k, o200k)
    estimate = estimate_tokens(text)
    assert estimate >= math.floor(real * (1 - MARGIN)) - SLACK, (name, estimate, real)


@pytest.mark.parametrize("name", CJK_AND_EMOJI)
def test_cjk_and_emoji_count_at_least_a_token_a_character(name: str) -> None:
    """Never a quarter of the length: at least one token per character, and at least
    as many as the stricter tokenizer counts (within the margin)."""
    _name, text, cl100k, o200k = next(r for r in TABLE if r[0] == name)
    estimate = estimate_tokens(text)
    assert estimate >= len(text.replace(" ", ""))
    assert estimate > math.ceil(len(text) / 4) * 2
    assert estimate >= math.floor(max(cl100k, o200k) * (1 - MARGIN))


def test_rare_ideographs_count_a_token_each_at_least() -> None:
    """A known limit, stated: ideographs outside a vocabulary cost a tokenizer up to
    their UTF-8 bytes (3 or 4 tokens); without a frequency table the estimate cannot
    tell them from common ones and counts 1.25 (3 outside the BMP), still never less than
    one a character."""
    _name, text, cl100k, _o200k = next(r for r in TABLE if r[0] == "chinese_rare")
    assert len(text) <= estimate_tokens(text) < cl100k


def test_english_stays_near_four_characters_a_token() -> None:
    """Conservative, not wildly so: English prose within 1.5x of the real count."""
    _name, text, cl100k, _o200k = next(r for r in TABLE if r[0] == "english_prose")
    assert cl100k <= estimate_tokens(text) <= cl100k * 1.5


def test_empty_and_tiny_texts() -> None:
    assert estimate_tokens("") == 0
    assert estimate_tokens("a") == 1
    assert estimate_tokens("🎉") == 3


def test_table_matches_the_tokenizer() -> None:
    bpe_openai = pytest.importorskip("bpe_openai")
    cl100k = bpe_openai.get_encoding("cl100k_base")
    o200k = bpe_openai.get_encoding("o200k_base")
    for name, text, want_cl100k, want_o200k in TABLE:
        assert (len(cl100k.encode(text)), len(o200k.encode(text))) == (
            want_cl100k,
            want_o200k,
        ), name
