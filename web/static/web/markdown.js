// A small markdown renderer that builds DOM nodes, for replies (untrusted text).
//
// Why our own and not markdown-it + DOMPurify? Those produce an HTML string that must
// then be sanitized and parsed again; here nothing ever becomes HTML. Every piece of the
// reply reaches the page through createElement() and text nodes, so raw HTML in a reply
// ("<img onerror=...>", "<script>") is just characters, whatever the parser gets wrong.
// The subset is what chat replies use, and it is small enough to read in one sitting:
//
//   blocks:  paragraphs; ATX headings (# ...); fenced code blocks (``` or ~~~, with a
//            language word); bullet lists (-, *, +) and ordered lists (1. or 1)), nested
//            by indentation; block quotes (>); thematic breaks (---).
//   inline:  code spans (`x`, ``x``), **strong** / __strong__, *em* / _em_, ~~del~~,
//            [links](url "title"), <https://autolinks>, bare https:// URLs, backslash
//            escapes, hard breaks (two trailing spaces or a backslash). Soft line breaks
//            stay newlines (the stylesheet shows them as line breaks, as chat people expect).
//
// Links: only http:, https: and mailto: destinations become <a> (with
// rel="noopener noreferrer" and target="_blank"); any other destination (javascript:,
// data:, relative paths) leaves the link's text as plain text. Images (![alt](src)) are
// shown as a link to the image, never loaded (the page's CSP would block them anyway).
//
// It is deliberately forgiving rather than a full CommonMark implementation: no tables,
// no setext headings, no indented code blocks, no reference links, and nested emphasis of
// the same character is matched to the nearest closer. An unclosed code fence runs to the
// end of the text, so a reply still being streamed renders sensibly.
//
// Usage: element.replaceChildren(renderMarkdown(text));

const FENCE = /^ {0,3}(`{3,}|~{3,})[ \t]*([^\s`]*)[^`]*$/;
const HEADING = /^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$/;
const RULE = /^ {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$/;
const QUOTE = /^ {0,3}> ?(.*)$/;
const LIST_ITEM = /^( {0,12})([-*+]|\d{1,9}[.)])([ \t]+(.*)|[ \t]*$)/;
const BLANK = /^[ \t]*$/;

/** Schemes a link may point to; anything else is shown as text. */
const SAFE_SCHEMES = new Set(["http:", "https:", "mailto:"]);

/**
 * Render markdown `text` to a DocumentFragment (text nodes and a fixed set of elements).
 * @param {string} text
 * @returns {DocumentFragment}
 */
export function renderMarkdown(text) {
  const fragment = document.createDocumentFragment();
  const lines = String(text ?? "").replace(/\r\n?/g, "\n").split("\n");
  renderBlocks(lines, fragment);
  return fragment;
}

/** The href for a link destination, or null when it is not an allowed absolute URL. */
export function safeHref(destination) {
  const trimmed = String(destination).trim();
  // Browsers drop tabs and newlines inside URLs ("java\nscript:"); refuse them outright.
  if (!trimmed || /[\s\u0000-\u001f]/.test(trimmed)) return null;
  let url;
  try {
    url = new URL(trimmed); // no base: relative references throw
  } catch {
    return null;
  }
  return SAFE_SCHEMES.has(url.protocol) ? url.href : null;
}

function el(tag, className) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  return node;
}

const indentOf = (line) => line.match(/^[ \t]*/)[0].replace(/\t/g, "    ").length;

/** Remove up to `count` columns of leading indentation. */
function dedent(line, count) {
  let i = 0;
  let columns = 0;
  while (i < line.length && columns < count && (line[i] === " " || line[i] === "\t")) {
    columns += line[i] === "\t" ? 4 : 1;
    i++;
  }
  return line.slice(i);
}

/** Does `line` start a block other than a paragraph (so it ends a paragraph)? */
function startsBlock(line) {
  return (
    FENCE.test(line) ||
    HEADING.test(line) ||
    RULE.test(line) ||
    QUOTE.test(line) ||
    (LIST_ITEM.test(line) && !LIST_ITEM.exec(line)[3].match(/^[ \t]*$/))
  );
}

// --- Blocks --------------------------------------------------------------------------------

/** Deepest nesting of quotes and lists rendered; deeper content is shown as text. */
const MAX_DEPTH = 16;

function renderBlocks(lines, parent, depth = 0) {
  if (depth > MAX_DEPTH) {
    const p = el("p");
    p.textContent = lines.join("\n");
    parent.append(p);
    return;
  }
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    if (BLANK.test(line)) {
      i++;
      continue;
    }
    let match;
    if ((match = FENCE.exec(line))) {
      i = renderFence(lines, i, match, parent);
    } else if ((match = HEADING.exec(line))) {
      const level = Math.min(match[1].length + 2, 6); // "#" is a section of a reply: <h3>
      const heading = el(`h${level}`);
      renderInline(match[2] || "", heading);
      parent.append(heading);
      i++;
    } else if (RULE.test(line)) {
      parent.append(el("hr"));
      i++;
    } else if (QUOTE.test(line)) {
      const inner = [];
      while (i < lines.length && !BLANK.test(lines[i])) {
        const quoted = QUOTE.exec(lines[i]);
        if (!quoted && startsBlock(lines[i])) break;
        inner.push(quoted ? quoted[1] : lines[i]); // a lazy continuation line
        i++;
      }
      const quote = el("blockquote");
      renderBlocks(inner, quote, depth + 1);
      parent.append(quote);
    } else if (LIST_ITEM.test(line)) {
      i = renderList(lines, i, parent, depth);
    } else {
      const paragraph = [];
      while (i < lines.length && !BLANK.test(lines[i]) && !(paragraph.length && startsBlock(lines[i]))) {
        paragraph.push(lines[i].replace(/^[ \t]+/, ""));
        i++;
      }
      const p = el("p");
      renderInline(paragraph.join("\n"), p);
      parent.append(p);
    }
  }
}

function renderFence(lines, start, match, parent) {
  const fence = match[1];
  const closing = new RegExp(`^ {0,3}${fence[0] === "`" ? "`" : "~"}{${fence.length},}[ \\t]*$`);
  const indent = indentOf(lines[start]);
  const body = [];
  let i = start + 1;
  while (i < lines.length && !closing.test(lines[i])) {
    body.push(dedent(lines[i], indent));
    i++;
  }
  const pre = el("pre");
  const code = el("code");
  const language = match[2].replace(/[^\w+#.-]/g, "").slice(0, 30);
  if (language) {
    code.className = `language-${language}`;
    code.dataset.language = language;
  }
  code.textContent = body.join("\n");
  pre.append(code);
  parent.append(pre);
  return i + 1; // past the closing fence (or the end)
}

/** A list: consecutive items of the same kind; an item's lines are rendered as blocks. */
function renderList(lines, start, parent, depth) {
  const first = LIST_ITEM.exec(lines[start]);
  const ordered = /\d/.test(first[2]);
  const marker = ordered ? first[2].slice(-1) : first[2];
  const baseIndent = first[1].length;
  const list = el(ordered ? "ol" : "ul");
  if (ordered) {
    const number = Number.parseInt(first[2], 10);
    if (number !== 1) list.start = number;
  }
  let loose = false;
  const items = [];
  let i = start;
  while (i < lines.length) {
    const match = LIST_ITEM.exec(lines[i]);
    if (!match || match[1].length > baseIndent + 1) break; // deeper: a nested list
    const isOrdered = /\d/.test(match[2]);
    if (isOrdered !== ordered || (isOrdered ? match[2].slice(-1) : match[2]) !== marker) break;
    const content = match[4] ?? "";
    const spaces = match[3].length - content.length;
    const contentIndent = match[1].length + match[2].length + (spaces >= 1 && spaces <= 4 ? spaces : 1);
    const itemLines = [content];
    i++;
    let sawBlank = false;
    while (i < lines.length) {
      const line = lines[i];
      if (BLANK.test(line)) {
        sawBlank = true;
        itemLines.push("");
        i++;
        continue;
      }
      const indent = indentOf(line);
      if (indent >= contentIndent || (indent > baseIndent && LIST_ITEM.test(line))) {
        itemLines.push(dedent(line, Math.min(indent, contentIndent)));
        sawBlank = false;
        i++;
        continue;
      }
      if (!sawBlank && !startsBlock(line)) {
        itemLines.push(line.replace(/^[ \t]+/, "")); // a lazy paragraph continuation
        i++;
        continue;
      }
      break;
    }
    // Blank lines at the end of an item belong between items: a blank line between two
    // items (or inside one, between blocks) makes the list loose (paragraphs in items).
    while (itemLines.length > 1 && BLANK.test(itemLines[itemLines.length - 1])) itemLines.pop();
    if (itemLines.slice(1).some((l) => BLANK.test(l))) loose = true;
    items.push(itemLines);
    if (sawBlank) {
      const next = i < lines.length ? LIST_ITEM.exec(lines[i]) : null;
      if (next && next[1].length === baseIndent) loose = true;
      else break;
    }
  }
  for (const itemLines of items) {
    const li = el("li");
    renderBlocks(itemLines, li, depth + 1);
    if (!loose) {
      // A tight list: its items' paragraphs are shown without paragraph spacing.
      for (const p of Array.from(li.children)) {
        if (p.tagName === "P") p.replaceWith(...p.childNodes);
      }
    }
    list.append(li);
  }
  parent.append(list);
  return i;
}

// --- Inline --------------------------------------------------------------------------------

const PUNCTUATION = /[!-/:-@[-`{-~]/;
const WORD = /[\p{L}\p{N}]/u;
const SPACE = /\s/;

/** Length of the run of `ch` starting at `i`. */
function runLength(text, i, ch) {
  let n = 0;
  while (text[i + n] === ch) n++;
  return n;
}

/** The end (exclusive) of a code span opening at `i`, or -1 if it has no closer. */
function codeSpanEnd(text, i) {
  const n = runLength(text, i, "`");
  let j = i + n;
  while (j < text.length) {
    const k = text.indexOf("`", j);
    if (k === -1) return -1;
    const m = runLength(text, k, "`");
    if (m === n) return k + m;
    j = k + m;
  }
  return -1;
}

function canOpen(text, i, ch, n) {
  const next = text[i + n];
  if (next === undefined || SPACE.test(next)) return false;
  if (ch === "_") {
    const prev = text[i - 1];
    return prev === undefined || !WORD.test(prev); // no intraword _emphasis_
  }
  return true;
}

function canClose(text, i, ch, n) {
  const prev = text[i - 1];
  if (prev === undefined || SPACE.test(prev)) return false;
  if (ch === "_") {
    const next = text[i + n];
    return next === undefined || !WORD.test(next);
  }
  return true;
}

/**
 * Where the delimiter run of `n` × `ch` opened before `from` closes: the index of the
 * closing delimiters (n characters long), or -1. Code spans and escapes are skipped over,
 * and so is an inner run that opens and has its own closer ("*a **b** c*").
 *
 * `failed` remembers, per kind ("*1", "_2", ...), the smallest position a search from
 * which found no closer: a later search of that kind from further on is taken to fail
 * too, so text full of unmatched delimiters ("*a *b *c ...") stays linear to render.
 */
function findCloser(text, from, ch, n, failed, depth = 0) {
  const kind = ch + n;
  if (failed.has(kind) && failed.get(kind) <= from) return -1;
  let i = from;
  while (i < text.length) {
    const c = text[i];
    if (c === "\\") {
      i += 2;
    } else if (c === "`") {
      const end = codeSpanEnd(text, i);
      i = end === -1 ? i + runLength(text, i, "`") : end;
    } else if (c === ch) {
      const run = runLength(text, i, ch);
      if (run >= n && canClose(text, i, ch, run)) return i + run - n;
      const inner = Math.min(run, 3);
      const close =
        depth < 8 && canOpen(text, i + run - inner, ch, inner)
          ? findCloser(text, i + run, ch, inner, failed, depth + 1)
          : -1;
      i = close === -1 ? i + run : close + inner;
    } else {
      i++;
    }
  }
  failed.set(kind, Math.min(failed.get(kind) ?? from, from));
  return -1;
}

/** Longest link label and destination looked at (so unmatched brackets stay cheap). */
const MAX_LABEL = 1000;
const MAX_DESTINATION = 2048;

/** Parse `[text](destination "title")` at `i`: {label, destination, end} or null. */
function parseLink(text, i) {
  let depth = 0;
  let j = i;
  const labelEnd = Math.min(text.length, i + MAX_LABEL);
  for (; j < labelEnd; j++) {
    const c = text[j];
    if (c === "\\") {
      j++;
    } else if (c === "`") {
      const end = codeSpanEnd(text, j);
      if (end !== -1) j = end - 1;
    } else if (c === "[") {
      depth++;
    } else if (c === "]") {
      depth--;
      if (depth === 0) break;
    }
  }
  if (depth !== 0 || text[j + 1] !== "(") return null;
  const label = text.slice(i + 1, j);
  let k = j + 2;
  while (text[k] === " ") k++;
  let destination = "";
  if (text[k] === "<") {
    const close = text.indexOf(">", k);
    if (close === -1) return null;
    destination = text.slice(k + 1, close);
    k = close + 1;
  } else {
    let parens = 0;
    const startDest = k;
    const destinationEnd = Math.min(text.length, k + MAX_DESTINATION);
    for (; k < destinationEnd; k++) {
      const c = text[k];
      if (c === "\\") k++;
      else if (c === "(") parens++;
      else if (c === ")") {
        if (parens === 0) break;
        parens--;
      } else if (c <= " ") break; // whitespace (and control characters) ends it
    }
    destination = text.slice(startDest, k);
  }
  while (SPACE.test(text[k] || "")) k++;
  let title = "";
  if (text[k] === '"' || text[k] === "'" || text[k] === "(") {
    const quote = text[k] === "(" ? ")" : text[k];
    const close = text.indexOf(quote, k + 1);
    if (close === -1) return null;
    title = text.slice(k + 1, close);
    k = close + 1;
    while (SPACE.test(text[k] || "")) k++;
  }
  if (text[k] !== ")") return null;
  return { label, destination: destination.replace(/\\([!-/:-@[-`{-~])/g, "$1"), title, end: k + 1 };
}

function link(href, title) {
  const a = document.createElement("a");
  a.href = href;
  a.rel = "noopener noreferrer";
  a.target = "_blank";
  if (title) a.title = title;
  return a;
}

const URL_START = /^(?:https?:\/\/|mailto:)/i;
const BARE_URL = /^(?:https?:\/\/|mailto:)[^\s<>"]+/i;
const AUTOLINK = /^<((?:https?:\/\/|mailto:)[^\s<>]+)>/i;

/** Trailing punctuation of a bare URL is not part of it ("see https://x.org.") */
function trimUrl(url) {
  let end = url.length;
  while (end > 0 && /[.,:;!?'*_~]/.test(url[end - 1])) end--;
  let trimmed = url.slice(0, end);
  // A closing paren without its opener inside the URL belongs to the sentence.
  while (trimmed.endsWith(")") && (trimmed.match(/\(/g) || []).length < (trimmed.match(/\)/g) || []).length) {
    trimmed = trimmed.slice(0, -1);
  }
  return trimmed;
}

/** Render inline markdown `text` into `parent` (text nodes and inline elements only). */
function renderInline(text, parent) {
  let buffer = "";
  const failed = new Map(); // see findCloser()
  const flush = () => {
    if (buffer) parent.append(document.createTextNode(buffer));
    buffer = "";
  };
  let i = 0;
  while (i < text.length) {
    const c = text[i];
    // Backslash: an escaped punctuation character is literal; before a newline, a hard break.
    if (c === "\\") {
      const next = text[i + 1];
      if (next === "\n") {
        flush();
        parent.append(el("br"));
        i += 2;
        continue;
      }
      if (next !== undefined && PUNCTUATION.test(next)) {
        buffer += next;
        i += 2;
        continue;
      }
      buffer += c;
      i++;
      continue;
    }
    // Two or more spaces before a newline: a hard break.
    if (c === " " && /^ {2,}\n/.test(text.slice(i, i + 64))) {
      const n = runLength(text, i, " ");
      flush();
      parent.append(el("br"));
      i += n + 1;
      continue;
    }
    if (c === "`") {
      const n = runLength(text, i, "`");
      const end = codeSpanEnd(text, i);
      if (end === -1) {
        buffer += "`".repeat(n);
        i += n;
        continue;
      }
      let content = text.slice(i + n, end - n).replace(/\n/g, " ");
      if (content.length > 2 && content.startsWith(" ") && content.endsWith(" ") && content.trim()) {
        content = content.slice(1, -1);
      }
      flush();
      const code = el("code");
      code.textContent = content;
      parent.append(code);
      i = end;
      continue;
    }
    if (c === "!" && text[i + 1] === "[") {
      const parsed = parseLink(text, i + 1);
      if (parsed) {
        // An image: never loaded; a link to it (when its URL is allowed) or its alt text.
        flush();
        const href = safeHref(parsed.destination);
        const alt = parsed.label || parsed.destination;
        if (href) {
          const a = link(href, parsed.title);
          a.textContent = alt;
          parent.append(a);
        } else {
          parent.append(document.createTextNode(alt));
        }
        i = parsed.end;
        continue;
      }
    }
    if (c === "[") {
      const parsed = parseLink(text, i);
      if (parsed) {
        flush();
        const href = safeHref(parsed.destination);
        const target = href ? link(href, parsed.title) : document.createElement("span");
        renderInline(parsed.label, target);
        // A refused destination: the label stays, as text, and no link is made.
        parent.append(href ? target : document.createTextNode(target.textContent));
        i = parsed.end;
        continue;
      }
    }
    if (c === "<") {
      const match = AUTOLINK.exec(text.slice(i, i + 2048));
      const href = match && safeHref(match[1]);
      if (href) {
        flush();
        const a = link(href);
        a.textContent = match[1];
        parent.append(a);
        i += match[0].length;
        continue;
      }
    }
    if (URL_START.test(text.slice(i, i + 8)) && !WORD.test(text[i - 1] || "")) {
      const match = BARE_URL.exec(text.slice(i, i + 2048));
      if (match) {
        const url = trimUrl(match[0]);
        const href = safeHref(url);
        if (href && url.length > 8) {
          flush();
          const a = link(href);
          a.textContent = url;
          parent.append(a);
          i += url.length;
          continue;
        }
      }
    }
    if (c === "*" || c === "_" || c === "~") {
      const run = runLength(text, i, c);
      if (c === "~") {
        if (run === 2 && canOpen(text, i, c, 2)) {
          const close = findCloser(text, i + 2, c, 2, failed);
          if (close !== -1 && runLength(text, close, c) === 2) {
            flush();
            const del = el("del");
            renderInline(text.slice(i + 2, close), del);
            parent.append(del);
            i = close + 2;
            continue;
          }
        }
        buffer += c.repeat(run);
        i += run;
        continue;
      }
      const n = Math.min(run, 3);
      if (canOpen(text, i + run - n, c, n)) {
        const close = findCloser(text, i + run, c, n, failed);
        if (close !== -1 && close > i + run) {
          flush();
          buffer = c.repeat(run - n); // extra delimiters beyond three stay literal
          flush();
          const inner = text.slice(i + run, close);
          let node;
          if (n === 3) {
            node = el("em");
            const strong = el("strong");
            renderInline(inner, strong);
            node.append(strong);
          } else {
            node = el(n === 2 ? "strong" : "em");
            renderInline(inner, node);
          }
          parent.append(node);
          i = close + n;
          continue;
        }
      }
      buffer += c.repeat(run);
      i += run;
      continue;
    }
    buffer += c;
    i++;
  }
  flush();
}
