// A small Server-Sent Events parser for streams read with fetch().
//
// Why not EventSource? EventSource can only GET, and a chat turn is a POST with a JSON
// body. So the page POSTs with fetch() and parses `response.body` itself with this
// module; it uses EventSource only to *resume* a reply (a GET, see chat.js).
//
// The parser follows the WHATWG "event stream interpretation" rules:
//   - lines end with CRLF, LF or CR (a CR at the end of one network chunk and an LF at
//     the start of the next are one line ending);
//   - "field: value" (one space after the colon is dropped), "field" alone = empty value;
//   - a line starting with ":" is a comment (the server's `: keep-alive`);
//   - `data` lines are joined with "\n"; `event` sets the type (default "message");
//   - `id` sets the last event id, which persists across events (unless it contains NUL);
//   - `retry` with only digits sets the reconnection delay;
//   - a blank line dispatches the event; an event with no data is not dispatched;
//   - an unfinished event at the end of the stream is dropped.
// Bytes are decoded as UTF-8 with a streaming TextDecoder, so a multi-byte character
// split across two network chunks is decoded correctly.
//
// Usage:
//   const reader = response.body.getReader();
//   for await (const event of readEvents(reader)) {
//     // event = {type: "chunk", data: '{"type":"chunk",...}', id: "42"}
//   }

/** An incremental parser: feed it text with push(), it calls onEvent per event. */
export class SSEParser {
  /**
   * @param {(event: {type: string, data: string, id: string}) => void} onEvent
   * @param {{onRetry?: (ms: number) => void, onComment?: (text: string) => void}} [hooks]
   */
  constructor(onEvent, hooks = {}) {
    this.onEvent = onEvent;
    this.onRetry = hooks.onRetry || (() => {});
    this.onComment = hooks.onComment || (() => {});
    this.buffer = ""; // text not yet split into lines
    this.sawCR = false; // the last chunk ended with "\r": skip a leading "\n" in the next
    this.first = true; // a UTF-8 BOM at the very start is ignored
    this.lastEventId = "";
    this.resetEvent();
  }

  resetEvent() {
    this.eventType = "";
    this.dataLines = [];
  }

  /** Feed decoded text (any size, cut anywhere). */
  push(text) {
    if (this.first && text.length) {
      if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
      this.first = false;
    }
    if (this.sawCR && text.startsWith("\n")) text = text.slice(1);
    this.sawCR = false;
    this.buffer += text;

    let start = 0;
    const buf = this.buffer;
    for (let i = 0; i < buf.length; i++) {
      const ch = buf[i];
      if (ch !== "\n" && ch !== "\r") continue;
      this.line(buf.slice(start, i));
      if (ch === "\r") {
        if (i + 1 < buf.length) {
          if (buf[i + 1] === "\n") i++; // CRLF is one line ending
        } else {
          this.sawCR = true; // the LF may come in the next chunk
        }
      }
      start = i + 1;
    }
    this.buffer = buf.slice(start);
  }

  /** The stream ended: an event without its blank line is incomplete, so dropped. */
  end() {
    this.buffer = "";
    this.resetEvent();
  }

  /** Interpret one line (without its line ending). */
  line(line) {
    if (line === "") {
      this.dispatch();
      return;
    }
    if (line.startsWith(":")) {
      this.onComment(line.slice(1).trimStart());
      return;
    }
    const colon = line.indexOf(":");
    let field = line;
    let value = "";
    if (colon !== -1) {
      field = line.slice(0, colon);
      value = line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
    }
    switch (field) {
      case "event":
        this.eventType = value;
        break;
      case "data":
        this.dataLines.push(value);
        break;
      case "id":
        if (!value.includes("\0")) this.lastEventId = value;
        break;
      case "retry":
        if (/^\d+$/.test(value)) this.onRetry(Number(value));
        break;
      default:
        break; // unknown fields are ignored
    }
  }

  dispatch() {
    if (this.dataLines.length === 0) {
      this.resetEvent();
      return;
    }
    const event = {
      type: this.eventType || "message",
      data: this.dataLines.join("\n"),
      id: this.lastEventId,
    };
    this.resetEvent();
    this.onEvent(event);
  }
}

/**
 * Read a fetch() body as SSE events.
 *
 * @param {ReadableStreamDefaultReader<Uint8Array>} reader  from `response.body.getReader()`
 * @param {{onRetry?: (ms: number) => void, onComment?: (text: string) => void}} [hooks]
 * @returns {AsyncGenerator<{type: string, data: string, id: string}>}
 *   ends when the stream ends; throws when the connection breaks.
 */
export async function* readEvents(reader, hooks = {}) {
  const decoder = new TextDecoder("utf-8");
  const queue = [];
  const parser = new SSEParser((event) => queue.push(event), hooks);
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) {
        parser.push(decoder.decode()); // flush a trailing partial character
        parser.end();
        break;
      }
      parser.push(decoder.decode(value, { stream: true }));
      while (queue.length) yield queue.shift();
    }
    while (queue.length) yield queue.shift();
  } finally {
    // Stopping the loop early (break / return) cancels the HTTP response body.
    reader.cancel().catch(() => {});
  }
}
