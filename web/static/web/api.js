// Thin fetch() wrappers over the public API (docs: /api/v1/docs/, docs/api.md).
//
// The page is logged in with a Django session cookie, which the browser sends by itself
// (same origin). Writes (POST, PATCH, DELETE) must also send the CSRF token: Django sets
// it in the `csrftoken` cookie (the page view uses ensure_csrf_cookie) and expects it
// back in the `X-CSRFToken` header. A script or another app would instead send
// `Authorization: Token <key>` or `Bearer <jwt>` and need no CSRF token.
//
// Every error answer of the API is JSON with `detail` and `code` (plus data such as
// `errors` for a 400 or the quota for a 429); it is thrown as an ApiError.

export const API_ROOT = "/api/v1";

/** An error answer of the API, before any stream started. */
export class ApiError extends Error {
  constructor(status, body, headers) {
    const detail = (body && body.detail) || `The server answered ${status}.`;
    super(detail);
    this.name = "ApiError";
    this.status = status;
    this.code = (body && body.code) || `http_${status}`;
    this.detail = detail;
    this.body = body || {};
    const retryAfter = headers && headers.get("Retry-After");
    this.retryAfter = retryAfter ? Number(retryAfter) : null;
  }

  /** A sentence for people: the detail, field errors, and when to retry. */
  describe() {
    let text = this.detail;
    const errors = this.body.errors;
    if (errors && typeof errors === "object") {
      const parts = Object.entries(errors).map(
        ([field, msgs]) => `${field}: ${[].concat(msgs).map(flatten).join(" ")}`,
      );
      if (parts.length) text += ` (${parts.join("; ")})`;
    }
    if (this.retryAfter) text += ` Try again in ${this.retryAfter} s.`;
    return text;
  }
}

function flatten(value) {
  if (typeof value === "string") return value;
  if (Array.isArray(value)) return value.map(flatten).join(" ");
  if (value && typeof value === "object") return Object.values(value).map(flatten).join(" ");
  return String(value);
}

/** The CSRF token from the `csrftoken` cookie ("" when there is none). */
export function csrfToken() {
  for (const part of document.cookie.split(";")) {
    const [name, ...rest] = part.trim().split("=");
    if (name === "csrftoken") return decodeURIComponent(rest.join("="));
  }
  return "";
}

const SAFE_METHODS = new Set(["GET", "HEAD", "OPTIONS"]);

/**
 * fetch() with the session cookie, the CSRF header on writes, a JSON body, and
 * ApiError for any non-2xx answer. Returns the Response (not yet read).
 */
export async function request(path, { method = "GET", json, headers = {}, signal } = {}) {
  const init = {
    method,
    credentials: "same-origin",
    headers: { Accept: "application/json", ...headers },
    signal,
  };
  if (!SAFE_METHODS.has(method)) init.headers["X-CSRFToken"] = csrfToken();
  if (json !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(json);
  }
  const response = await fetch(path.startsWith("http") ? path : API_ROOT + path, init);
  if (!response.ok) {
    let body = null;
    try {
      body = await response.json();
    } catch {
      body = null; // not JSON (e.g. a proxy's HTML error page)
    }
    throw new ApiError(response.status, body, response.headers);
  }
  return response;
}

async function getJSON(path, options) {
  const response = await request(path, options);
  return response.status === 204 ? null : response.json();
}

/** All items of a paginated list ({count, next, previous, results}), following `next`. */
async function getAll(path) {
  const items = [];
  let url = path;
  while (url) {
    const page = await getJSON(url);
    if (Array.isArray(page)) return page; // an unpaginated list
    items.push(...page.results);
    url = page.next;
  }
  return items;
}

const q = encodeURIComponent;

// --- Contexts and conversations --------------------------------------------------------
export const listContexts = () => getAll("/contexts/");
export const createContext = (name) =>
  getJSON("/contexts/", { method: "POST", json: { name } });
export const listConversations = (contextId) =>
  getAll(`/conversations/?context_id=${q(contextId)}`);
export const getConversation = (conversationId) =>
  getJSON(`/conversations/${q(conversationId)}/`);
/** Rename a conversation; a title set here is never overwritten by a generated one. */
export const renameConversation = (conversationId, title) =>
  getJSON(`/conversations/${q(conversationId)}/`, { method: "PATCH", json: { title } });
/** Messages of a conversation, oldest first (superseded ones left out by the server). */
export const listMessages = (conversationId) =>
  getAll(`/conversations/${q(conversationId)}/messages/`);
/** The conversation as a download (format "md" or "json"); a plain link, no fetch needed. */
export const exportUrl = (conversationId, format) =>
  `${API_ROOT}/conversations/${q(conversationId)}/export?format=${q(format)}`;

// --- Search and models (docs/api.md#search, docs/api.md#routing) --------------------------
/** Messages and flows matching `query`, best first; `contextId` narrows to one context. */
export const search = (query, contextId) =>
  getJSON(`/search/?q=${q(query)}${contextId ? `&context_id=${q(contextId)}` : ""}`);
/** The models a turn may ask for (a route name "provider:model"), with their prices. */
export const listModels = () => getAll("/models/");

// --- Flows and quota ---------------------------------------------------------------------
export const listFlows = (contextId) => getAll(`/contexts/${q(contextId)}/flows/`);
export const markFlowDone = (flowId) =>
  getJSON(`/flows/${q(flowId)}/`, { method: "PATCH", json: { status: "done" } });
export const getQuota = () => getJSON("/quota/");
/** A flow's history: created, updated, done, reopened; by whom and from which message. */
export const listFlowEvents = (flowId) => getAll(`/flows/${q(flowId)}/events/`);

// --- The streaming turn (docs/api.md#the-streaming-turn) -----------------------------------

const streamPost = (path, json, signal) =>
  request(path, { method: "POST", json, headers: { Accept: "text/event-stream" }, signal });

/**
 * Start a chat turn and return the SSE Response (read `response.body` with sse.js).
 *
 * `body` is either {context_id, conversation_id?, messages: [{role, content}, ...]}
 * (the client sends the history) or {conversation_id, message} (the server keeps it).
 * Problems before the stream (400, 404, 409 conversation_busy, 429 quota_exceeded or
 * too_many_streams, 503 ai_unavailable) throw an ApiError.
 */
export const startTurn = (body, { signal } = {}) =>
  streamPost("/conversations/stream", body, signal);

/**
 * A new reply to the same user message, in place of the last assistant reply
 * `messageId` (which becomes superseded). Streams like startTurn.
 */
export const regenerateMessage = (messageId, body = {}, { signal } = {}) =>
  streamPost(`/messages/${q(messageId)}/regenerate`, body, signal);

/**
 * Replace the user message `messageId` with `content`: it and everything after it become
 * superseded, a new user message is stored and a new reply streams like startTurn.
 */
export const editMessage = (messageId, body, { signal } = {}) =>
  streamPost(`/messages/${q(messageId)}/edit`, body, signal);

/** Stop a reply; the stream then ends with `done`, finish_reason "cancelled". */
export const cancelMessage = (messageId) =>
  getJSON(`/messages/${q(messageId)}/cancel`, { method: "POST" });

/**
 * The URL to resume a reply with EventSource: the first connection says where to start
 * with ?last_event_id=; EventSource's own reconnects send the Last-Event-ID header,
 * which the server prefers.
 */
export const resumeUrl = (messageId, lastEventId) =>
  `${API_ROOT}/messages/${q(messageId)}/stream?last_event_id=${q(lastEventId)}`;
