"""Replies as sanitized markdown on the chat page (docs/api.md#the-chat-page).

markdown.js builds DOM nodes from the reply text (never HTML); these tests drive it in
Chromium: its output for the constructs chat replies use, what it refuses (raw HTML,
javascript: links), and a streamed reply rendered through a real daphne.
"""

from __future__ import annotations

import json

from playwright.sync_api import Page, expect

from conversations.models import Message
from tests.browser.test_chat_page import LAST_REPLY, LAST_REPLY_BODY, last_reply_id, send

RENDER = r"""async (cases) => {
    const script = document.querySelector('script[type=module]');
    const { renderMarkdown } = await import(new URL('markdown.js', script.src));
    const out = {};
    for (const [name, text] of Object.entries(cases)) {
        const box = document.createElement('div');
        box.append(renderMarkdown(text));
        out[name] = box.innerHTML;
    }
    return out;
}"""

LINK = '<a href="https://example.com/a?b=1" rel="noopener noreferrer" target="_blank">'
CASES = {
    "paragraphs": ("one\ntwo\n\nthree", "<p>one\ntwo</p><p>three</p>"),
    "emphasis": (
        "**bold**, *em*, _em_, __strong__, ~~gone~~, ***both***",
        "<p><strong>bold</strong>, <em>em</em>, <em>em</em>, <strong>strong</strong>, "
        "<del>gone</del>, <em><strong>both</strong></em></p>",
    ),
    "nested_emphasis": ("*a **b** c*", "<p><em>a <strong>b</strong> c</em></p>"),
    "no_intraword_underscore": ("snake_case_name and 2 * 3 * 4", None),
    "bullets": ("- one\n- two\n  - inner\n- three", None),
    "ordered": ("3. three\n4. four", '<ol start="3"><li>three</li><li>four</li></ol>'),
    "loose_list": ("- a\n\n- b", "<ul><li><p>a</p></li><li><p>b</p></li></ul>"),
    "fence": (
        "```python\nif a < b:\n    print('<b>')\n```",
        '<pre><code class="language-python" data-language="python">'
        "if a &lt; b:\n    print('&lt;b&gt;')</code></pre>",
    ),
    "unclosed_fence": ("```\nstill typing", "<pre><code>still typing</code></pre>"),
    "inline_code": (
        "use `x <y>` or ``a ` b``",
        "<p>use <code>x &lt;y&gt;</code> or <code>a ` b</code></p>",
    ),
    "link": ("[site](https://example.com/a?b=1)", f"<p>{LINK}site</a></p>"),
    "autolink": (
        "see https://example.com/a?b=1.",
        f"<p>see {LINK}https://example.com/a?b=1</a>.</p>",
    ),
    "mailto": ("[mail](mailto:a@example.com)", None),
    "javascript_link": ("[click](javascript:alert(1))", "<p>click</p>"),
    "data_link": ("[x](data:text/html;base64,PHNjcmlwdD4=)", "<p>x</p>"),
    "relative_link": ("[x](/admin/)", "<p>x</p>"),
    "image": ("![alt](https://example.com/i.png)", None),
    "raw_html": (
        '<img src=x onerror="alert(1)"><script>alert(1)</script>',
        '<p>&lt;img src=x onerror="alert(1)"&gt;&lt;script&gt;alert(1)&lt;/script&gt;</p>',
    ),
    "heading_quote_rule": (
        "# Title\n> quoted\n\n---",
        "<h3>Title</h3><blockquote><p>quoted</p></blockquote><hr>",
    ),
    "escapes": (r"\*not em\* \[x\](y)", "<p>*not em* [x](y)</p>"),
    "hard_break": ("a  \nb", "<p>a<br>b</p>"),
}


def test_the_renderer_builds_the_markdown_subset_and_refuses_the_rest(logged_in: Page):
    html = logged_in.evaluate(RENDER, {name: text for name, (text, _) in CASES.items()})
    for name, (_, expected) in CASES.items():
        if expected is not None:
            assert html[name] == expected, name
    assert "<em>" not in html["no_intraword_underscore"]
    assert "snake_case_name" in html["no_intraword_underscore"]
    assert html["bullets"] == (
        "<ul><li>one</li><li>two<ul><li>inner</li></ul></li><li>three</li></ul>"
    )
    assert 'href="mailto:a@example.com"' in html["mailto"]
    assert "<img" not in html["image"] and 'href="https://example.com/i.png"' in html["image"]


PATHOLOGICAL = r"""async () => {
    const script = document.querySelector('script[type=module]');
    const { renderMarkdown } = await import(new URL('markdown.js', script.src));
    const cases = ["*a ".repeat(3000), "_b ".repeat(3000), "**a *b ".repeat(1500),
                   "~~a ".repeat(3000), "[a](".repeat(2000), "[".repeat(5000)];
    const times = [];
    for (const text of cases) {
        const started = performance.now();
        const box = document.createElement('div');
        box.append(renderMarkdown(text));
        times.push(performance.now() - started);
        if (box.textContent !== text) return {broken: text.slice(0, 20)};
    }
    // Deep nesting renders (deeper than 16 levels as text) instead of overflowing the stack.
    const deep = document.createElement('div');
    deep.append(renderMarkdown(">".repeat(20000) + " x\n\n" + "- a\n  ".repeat(500) + "- z"));
    if (!deep.textContent.endsWith("z")) return {broken: "deep nesting"};
    return {times};
}"""


def test_unmatched_delimiters_render_as_text_in_linear_time(logged_in: Page):
    # Thousands of unmatched "*", "_", "~~" or "[" (a model can send anything) are
    # rendered as their text, each sample in well under a second (not exponential), and
    # deep nesting does not overflow the stack.
    result = logged_in.evaluate(PATHOLOGICAL)
    assert "broken" not in result, result
    assert max(result["times"]) < 1000, result["times"]


def test_a_markdown_reply_renders_as_lists_code_and_links(logged_in: Page):
    page = logged_in
    # The mock provider echoes the message ([[mock:echo]]), so the reply is this markdown.
    sample = (
        "[[mock:echo]] Here is the plan:\n\n"
        "- book the **flight**\n- call the client\n\n"
        "1. first\n2. second\n\n"
        "```js\nconst x = 1 < 2;\n```\n\n"
        "Read [the docs](https://example.com/docs) or `inline code`."
    )
    page.fill("#composer-input", sample)
    page.press("#composer-input", "Enter")
    reply = page.locator(LAST_REPLY)
    expect(reply).to_have_attribute("data-status", "complete", timeout=20_000)
    body = page.locator(LAST_REPLY_BODY)
    expect(body.locator("ul > li")).to_have_count(2)
    expect(body.locator("ul > li strong")).to_have_text("flight")
    expect(body.locator("ol > li")).to_have_count(2)
    expect(body.locator("pre > code")).to_have_text("const x = 1 < 2;")
    expect(body.locator("p code")).to_have_text("inline code")
    link = body.get_by_role("link", name="the docs")
    expect(link).to_have_attribute("href", "https://example.com/docs")
    expect(link).to_have_attribute("rel", "noopener noreferrer")
    # The stored reply is the markdown source; the user's own message stays plain text.
    assert Message.objects.get(pk=last_reply_id(page)).content == sample
    expect(page.locator(".message--user .message__body").last).to_have_text(sample)
    assert page.locator(".message--user ul").count() == 0


def test_html_and_javascript_links_in_a_reply_run_nothing(logged_in: Page):
    page = logged_in
    payload = (
        '<img src=x onerror="window.__pwned=1"> <script>window.__pwned=1</script> '
        '[click me](javascript:window.__pwned=1) <a href="javascript:window.__pwned=1">a</a>'
    )
    send(page, f"[[mock:echo]] {payload}")
    expect(page.locator(LAST_REPLY)).to_have_attribute("data-status", "complete", timeout=20_000)
    body = page.locator(LAST_REPLY_BODY)
    expect(body).to_contain_text('<img src=x onerror="window.__pwned=1">')
    expect(body).to_contain_text("<script>window.__pwned=1</script>")
    assert page.locator("#messages img, #messages script, #messages a").count() == 0
    body.get_by_text("click me").click()
    page.wait_for_timeout(200)
    assert page.evaluate("() => window.__pwned") is None


def test_the_streaming_reply_renders_markdown_as_it_grows(logged_in: Page):
    page = logged_in
    # Record the reply's element structure while it streams: the list appears before the end.
    page.evaluate(
        """() => {
            window.__shapes = [];
            window.__sampler = setInterval(() => {
                const bodies = document.querySelectorAll('.message--assistant .message__body');
                const last = bodies[bodies.length - 1];
                if (last) window.__shapes.push([last.querySelectorAll('li').length,
                    last.closest('.message').dataset.status]);
            }, 10);
        }"""
    )
    items = "\n".join(f"- item {n}" for n in range(8))
    send(page, f"[[mock:echo]] [[mock:slow:60]]\n{items}")
    expect(page.locator(LAST_REPLY)).to_have_attribute("data-status", "complete", timeout=30_000)
    shapes = page.evaluate("() => { clearInterval(window.__sampler); return window.__shapes; }")
    growing = sorted({count for count, status in shapes if status == "streaming"})
    assert len(growing) >= 3, f"the list did not grow while streaming: {json.dumps(shapes)[:300]}"
    expect(page.locator(f"{LAST_REPLY_BODY} >> li")).to_have_count(8)
