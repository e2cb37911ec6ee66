// The chat page: a reference client of the public API, in plain DOM code.
//
// What to read here, if you are writing another client:
//   - send():          a chat turn is a fetch() POST answered with SSE, read by sse.js;
//   - handleEvent():   what each event of the stream means for the UI (docs/api.md#sse-events);
//   - resume():        following a reply with EventSource after the fetch stream broke or
//                      after a reload, without losing or doubling text (docs/api.md#resume-cancel-disconnect);
//   - stop():          cancelling a reply;
//   - Reply:           reply text is untrusted, so it only ever goes into text nodes.
//
// Safety rule for the whole file: text from the server (replies, titles, flow names,
// error messages) is put into the page with textContent / text nodes, never innerHTML.

import * as api from "./api.js";
import { readEvents } from "./sse.js";

const $ = (id) => document.getElementById(id);

const el = {
  notice: $("notice"),
  contextForm: $("context-form"),
  contextName: $("context-name"),
  contextList: $("context-list"),
  newConversation: $("new-conversation"),
  conversationList: $("conversation-list"),
  heading: $("chat-heading"),
  messages: $("messages"),
  composer: $("composer"),
  input: $("composer-input"),
  send: $("send"),
  stop: $("stop"),
  typing: $("typing"),
  flowList: $("flow-list"),
  flowsEmpty: $("flows-empty"),
  quota: $("quota"),
};

const state = {
  contexts: [],
  contextId: null,
  conversations: [],
  conversationId: null,
  flows: [],
  live: null, // the Reply being streamed into the open conversation, if any
  unloading: false, // the page is going away: do not try to resume anything
};

/** The events of a chat turn's stream, in their order (docs/api.md#sse-events). */
const EVENT_TYPES = ["metadata", "typing", "chunk", "flows_extracted", "done", "error"];

/** Event ids encode positions: a chunk ending at character n of the reply has id 2 + n. */
const TEXT_BASE_ID = 2;

/** Length in code points, as the server counts (JS .length counts UTF-16 units). */
const codePoints = (text) => Array.from(text).length;

// --- Small DOM helpers --------------------------------------------------------------------

/** Create an element with a class and text (as text, never HTML). */
function h(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = text;
  return node;
}

function showNotice(text) {
  el.notice.textContent = text;
  el.notice.hidden = false;
}

function clearNotice() {
  el.notice.hidden = true;
  el.notice.textContent = "";
}

/** A message for people from any error thrown by api.js or the network. */
function describeError(err) {
  if (err instanceof api.ApiError) return err.describe();
  return "Could not reach the server. Check your connection and try again.";
}

function scrollToEnd(force = false) {
  const box = el.messages;
  const nearEnd = box.scrollHeight - box.scrollTop - box.clientHeight < 80;
  if (force || nearEnd) box.scrollTop = box.scrollHeight;
}

// --- Where we are: #context=...&conversation=... survives a reload -----------------------

function readLocation() {
  const params = new URLSearchParams(location.hash.slice(1));
  return { contextId: params.get("context"), conversationId: params.get("conversation") };
}

function writeLocation() {
  const params = new URLSearchParams();
  if (state.contextId) params.set("context", state.contextId);
  if (state.conversationId) params.set("conversation", state.conversationId);
  history.replaceState(null, "", `#${params}`);
}

// --- Messages -------------------------------------------------------------------------------

const ROLE_LABELS = { user: "You", assistant: "Assistant", system: "System" };
const STATUS_LABELS = {
  streaming: "typing…",
  cancelled: "stopped",
  failed: "failed",
  interrupted: "interrupted",
};

/** An <article> for one message; its text goes into a text node. */
function messageElement({ id, role, content, status }) {
  const article = h("article", `message message--${role}`);
  if (id) article.dataset.messageId = id;
  const header = h("header", "message__header");
  header.append(h("span", "message__role", ROLE_LABELS[role] || role));
  header.append(h("span", "message__status"));
  const body = h("div", "message__body");
  body.append(document.createTextNode(content || ""));
  article.append(header, body);
  setMessageStatus(article, status || "complete");
  return article;
}

function setMessageStatus(article, status) {
  article.dataset.status = status;
  article.querySelector(".message__status").textContent = STATUS_LABELS[status] || "";
}

function appendMessage(message) {
  const article = messageElement(message);
  el.messages.append(article);
  scrollToEnd(true);
  return article;
}

/**
 * The assistant reply being streamed: its DOM, the text shown so far and the id of the
 * last event applied (what a resume starts after).
 */
class Reply {
  constructor({ messageId = null, content = "", retryText = "" } = {}) {
    this.messageId = messageId;
    this.text = content;
    this.lastEventId = 0;
    this.retryText = retryText; // what "Retry" sends again
    this.finished = false;
    this.detached = false; // the user left the conversation; the server goes on
    this.controller = null; // aborts the fetch stream
    this.source = null; // the EventSource of a resume
    this.article = messageElement({ id: messageId, role: "assistant", content, status: "streaming" });
    this.body = this.article.querySelector(".message__body");
    // Screen readers announce the reply as it types, politely (after what they are saying).
    this.body.setAttribute("aria-live", "polite");
    this.textNode = this.body.firstChild;
  }

  /** Append a text delta: as text, so "<script>" in a reply is just characters. */
  append(delta) {
    this.text += delta;
    this.textNode.appendData(delta);
    scrollToEnd();
  }

  setTyping(on) {
    this.article.classList.toggle("message--typing", on);
    el.typing.hidden = !on;
  }

  finish(status) {
    this.end();
    setMessageStatus(this.article, status);
  }

  /** An `error` event (or a stream we could not follow): show it, offer a retry. */
  fail({ message, retryable }) {
    this.end();
    setMessageStatus(this.article, "failed");
    const box = h("div", "message__error");
    box.setAttribute("role", "alert");
    box.append(h("p", null, message || "The reply failed."));
    if (retryable && this.retryText) {
      const retry = h("button", "button button--small", "Retry");
      retry.type = "button";
      retry.addEventListener("click", () => {
        if (state.live) return;
        box.remove();
        send(this.retryText);
      });
      box.append(retry);
    }
    this.article.append(box);
    scrollToEnd();
  }

  end() {
    this.finished = true;
    this.setTyping(false);
    if (this.source) this.source.close(); // or EventSource reconnects forever
    if (state.live === this) {
      state.live = null;
      setBusy(false);
    }
  }

  /** Stop following (the user opened another conversation); the reply goes on. */
  detach() {
    this.detached = true;
    if (this.controller) this.controller.abort();
    this.end();
  }
}

function setBusy(busy) {
  el.send.disabled = busy;
  el.stop.hidden = !busy;
  el.stop.disabled = !(busy && state.live && state.live.messageId);
  if (!busy) el.typing.hidden = true;
}

// --- The stream's events ------------------------------------------------------------------

/**
 * Apply one event of a reply's stream, from fetch() or from EventSource.
 * Events are applied once: an event whose id is not above the last one applied is
 * skipped, so overlapping streams can never double text.
 */
function handleEvent(reply, type, data, id) {
  if (reply.detached || reply.finished) return;
  const eventId = Number(id);
  if (id !== "" && Number.isInteger(eventId)) {
    if (eventId <= reply.lastEventId) return;
    reply.lastEventId = eventId;
  }
  switch (type) {
    case "metadata":
      // The ids the rest of the turn needs: the reply's message id (to stop or resume it)
      // and, for a new conversation, the conversation the server just created.
      reply.messageId = data.message_id;
      reply.article.dataset.messageId = data.message_id;
      el.stop.disabled = false;
      if (data.quota) renderQuota(data.quota);
      if (!state.conversationId && data.conversation_id) {
        state.conversationId = data.conversation_id;
        writeLocation();
        loadConversations().catch(() => {});
      }
      break;
    case "typing":
      reply.setTyping(data.status === "start");
      break;
    case "chunk":
      reply.append(data.content);
      break;
    case "flows_extracted":
      mergeFlows(data.flows || []);
      break;
    case "done":
      reply.finish(data.finish_reason === "cancelled" ? "cancelled" : "complete");
      if (data.quota) renderQuota(data.quota);
      loadConversations().catch(() => {}); // titles and order may have changed
      break;
    case "error":
      // {code, message, retryable}: `message` is written for people by the server.
      reply.fail(data);
      break;
    default:
      break; // an event this client does not know: ignore it (forward compatible)
  }
}

// --- Sending: fetch() + sse.js ----------------------------------------------------------------

async function send(text) {
  if (state.live) return;
  if (!state.contextId) {
    showNotice("Create or choose a context first.");
    return;
  }
  clearNotice();
  // Server-kept history when the conversation exists; a new one is created from the
  // context with the client-history shape (here just the one user message).
  const body = state.conversationId
    ? { conversation_id: state.conversationId, message: text }
    : { context_id: state.contextId, messages: [{ role: "user", content: text }] };

  const userArticle = appendMessage({ role: "user", content: text });
  const reply = new Reply({ retryText: text });
  el.messages.append(reply.article);
  scrollToEnd(true);
  state.live = reply;
  setBusy(true);

  reply.controller = new AbortController();
  let response;
  try {
    response = await api.startTurn(body, { signal: reply.controller.signal });
  } catch (err) {
    // Refused before the stream (400, 404, 409, 429, 503) or the network failed: the turn
    // did not happen, so take both bubbles away and give the text back.
    const userLeft = reply.detached; // aborted because another conversation was opened
    reply.detach();
    reply.article.remove();
    userArticle.remove();
    if (!userLeft) {
      if (!el.input.value) el.input.value = text;
      showNotice(describeError(err));
    }
    return;
  }
  await readFetchStream(reply, response);
}

/** Read the POST's SSE body; if it ends before `done`/`error`, resume with EventSource. */
async function readFetchStream(reply, response) {
  try {
    for await (const event of readEvents(response.body.getReader())) {
      if (reply.detached) return;
      handleEvent(reply, event.type, JSON.parse(event.data), event.id);
      if (reply.finished) return;
    }
  } catch {
    // The connection broke (network error, server restart) or we aborted it (detach).
  }
  if (reply.finished || reply.detached || state.unloading) return;
  if (reply.messageId) {
    resume(reply);
  } else {
    reply.fail({ message: "The connection broke before the reply started.", retryable: true });
  }
}

// --- Resuming: EventSource on /messages/{id}/stream -------------------------------------------

/**
 * Follow a reply with EventSource from after `reply.lastEventId`.
 *
 * The first request says where to start with ?last_event_id=N. If that connection
 * drops, EventSource reconnects by itself and sends the `Last-Event-ID` header (the id of
 * the last event it received), which the server prefers over the query. The server sends
 * exactly the text after that point, so nothing is lost or doubled. We close the
 * EventSource on `done` or `error`: after the stream ends normally it would otherwise
 * reconnect forever.
 */
function resume(reply) {
  if (reply.source) reply.source.close();
  state.live = reply;
  setBusy(true);
  setMessageStatus(reply.article, "streaming");
  const source = new EventSource(api.resumeUrl(reply.messageId, reply.lastEventId));
  reply.source = source;

  for (const type of EVENT_TYPES) {
    source.addEventListener(type, (event) => {
      // EventSource also fires a plain Event named "error" when the *connection* fails;
      // only a MessageEvent is the server's `event: error`.
      if (!(event instanceof MessageEvent)) return;
      handleEvent(reply, type, JSON.parse(event.data), event.lastEventId);
    });
  }
  source.addEventListener("open", () => reply.article.classList.remove("message--reconnecting"));
  source.onerror = () => {
    if (reply.finished || reply.detached) return;
    if (source.readyState === EventSource.CLOSED) {
      // Not an event stream (e.g. 404 or 401 as JSON): EventSource gives up for good.
      reply.fail({ message: "Lost the reply. Reload the page to see what was saved.", retryable: false });
    } else {
      reply.article.classList.add("message--reconnecting"); // it retries by itself
    }
  };
}

// --- Stopping -------------------------------------------------------------------------------------

async function stop() {
  const reply = state.live;
  if (!reply || !reply.messageId) return;
  el.stop.disabled = true;
  try {
    // The stream we are reading then ends with `done`, finish_reason "cancelled".
    await api.cancelMessage(reply.messageId);
  } catch (err) {
    showNotice(describeError(err));
    if (state.live === reply) el.stop.disabled = false;
  }
}

// --- Contexts and conversations ---------------------------------------------------------------

function renderContexts() {
  el.contextList.replaceChildren(
    ...state.contexts.map((context) => {
      const item = h("li");
      const button = h("button", "list__item", context.name);
      button.type = "button";
      button.dataset.contextId = context.id;
      if (context.id === state.contextId) button.setAttribute("aria-current", "true");
      button.addEventListener("click", () => selectContext(context.id));
      item.append(button);
      return item;
    }),
  );
}

function renderConversations() {
  el.conversationList.replaceChildren(
    ...state.conversations.map((conversation) => {
      const item = h("li");
      const button = h("button", "list__item");
      button.type = "button";
      button.dataset.conversationId = conversation.id;
      button.append(h("span", "list__title", conversation.title || "Untitled conversation"));
      button.append(h("span", "list__meta", formatDate(conversation.updated_at || conversation.created_at)));
      if (conversation.id === state.conversationId) button.setAttribute("aria-current", "true");
      button.addEventListener("click", () => openConversation(conversation.id));
      item.append(button);
      return item;
    }),
  );
  const current = state.conversations.find((c) => c.id === state.conversationId);
  el.heading.textContent = current
    ? current.title || "Untitled conversation"
    : state.conversationId
      ? "Conversation"
      : "New conversation";
}

function formatDate(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? "" : date.toLocaleString();
}

async function loadContexts() {
  state.contexts = await api.listContexts();
  renderContexts();
}

async function loadConversations() {
  if (!state.contextId) {
    state.conversations = [];
  } else {
    const contextId = state.contextId;
    const conversations = await api.listConversations(contextId);
    if (contextId !== state.contextId) return; // the user moved on meanwhile
    state.conversations = conversations;
  }
  renderConversations();
}

async function selectContext(contextId, { conversationId = null } = {}) {
  if (state.live) state.live.detach();
  clearNotice();
  state.contextId = contextId;
  state.conversationId = null;
  state.flows = [];
  writeLocation();
  renderContexts();
  renderFlows();
  el.messages.replaceChildren();
  try {
    await Promise.all([loadConversations(), loadFlows()]);
  } catch (err) {
    showNotice(describeError(err));
    return;
  }
  if (conversationId && state.conversations.some((c) => c.id === conversationId)) {
    await openConversation(conversationId);
  } else {
    newConversation();
  }
}

function newConversation() {
  if (state.live) state.live.detach();
  state.conversationId = null;
  writeLocation();
  renderConversations();
  el.messages.replaceChildren();
}

/**
 * Show a conversation's stored messages. A reply still being generated (status
 * "streaming", e.g. after a reload) shows its saved part and is resumed from there:
 * the saved part has N code points, so the next event to receive is after id 2 + N.
 */
async function openConversation(conversationId) {
  if (state.live) state.live.detach();
  clearNotice();
  state.conversationId = conversationId;
  writeLocation();
  renderConversations();
  let messages;
  try {
    messages = await api.listMessages(conversationId);
  } catch (err) {
    showNotice(describeError(err));
    return;
  }
  if (state.conversationId !== conversationId) return; // the user moved on meanwhile

  el.messages.replaceChildren();
  let streaming = null;
  let lastUserText = "";
  for (const message of messages) {
    if (message.role === "assistant" && message.status === "streaming") {
      const reply = new Reply({ messageId: message.id, content: message.content, retryText: lastUserText });
      reply.lastEventId = TEXT_BASE_ID + codePoints(message.content);
      el.messages.append(reply.article);
      streaming = reply;
    } else {
      el.messages.append(messageElement(message));
    }
    if (message.role === "user") lastUserText = message.content;
  }
  scrollToEnd(true);
  if (streaming) resume(streaming);
}

// --- Flows ---------------------------------------------------------------------------------------

const PRIORITY_ORDER = { high: 0, medium: 1, low: 2 };

async function loadFlows() {
  if (!state.contextId) return;
  const contextId = state.contextId;
  const flows = await api.listFlows(contextId);
  if (contextId !== state.contextId) return;
  state.flows = flows;
  renderFlows();
}

/** Add or update flows (from `flows_extracted`) that belong to the open context. */
function mergeFlows(flows) {
  for (const flow of flows) {
    if (flow.context_id !== state.contextId) continue;
    const index = state.flows.findIndex((f) => f.id === flow.id);
    if (index === -1) state.flows.push(flow);
    else state.flows[index] = flow;
  }
  renderFlows();
}

function renderFlows() {
  const flows = [...state.flows].sort(
    (a, b) =>
      (a.status === "done") - (b.status === "done") ||
      (PRIORITY_ORDER[a.priority] ?? 3) - (PRIORITY_ORDER[b.priority] ?? 3) ||
      (a.due_date || "9999").localeCompare(b.due_date || "9999"),
  );
  el.flowsEmpty.hidden = flows.length > 0;
  el.flowList.replaceChildren(...flows.map(flowElement));
}

function flowElement(flow) {
  const item = h("li", "flow");
  item.dataset.flowId = flow.id;
  item.dataset.status = flow.status;
  item.append(h("p", "flow__title", flow.title));
  const meta = h("p", "flow__meta");
  meta.append(h("span", `badge badge--${flow.priority}`, `${flow.priority} priority`));
  if (flow.due_date) {
    const due = h("time", "flow__due", `due ${flow.due_date}`);
    due.dateTime = flow.due_date;
    meta.append(" ", due);
  }
  item.append(meta);
  if (flow.status === "done") {
    item.append(h("p", "flow__done", "Done"));
  } else {
    const button = h("button", "button button--small", "Mark done");
    button.type = "button";
    button.setAttribute("aria-label", `Mark "${flow.title}" done`);
    button.addEventListener("click", async () => {
      button.disabled = true;
      try {
        mergeFlows([await api.markFlowDone(flow.id)]);
      } catch (err) {
        button.disabled = false;
        showNotice(describeError(err));
      }
    });
    item.append(button);
  }
  return item;
}

// --- Quota ---------------------------------------------------------------------------------------

function renderQuota(quota) {
  const remaining = (left, limit, used) => left ?? Math.max(0, limit - used);
  const rows = [
    ["Requests", `${remaining(quota.requests_remaining, quota.requests_limit, quota.requests_used)} of ${quota.requests_limit}`],
    ["Tokens", `${remaining(quota.tokens_remaining, quota.tokens_limit, quota.tokens_used)} of ${quota.tokens_limit}`],
    ["Resets", quota.resets_at ? formatDate(quota.resets_at) : "never"],
  ];
  el.quota.replaceChildren(
    ...rows.flatMap(([term, value]) => {
      const dd = h("dd", null, value);
      dd.dataset.quota = term.toLowerCase();
      return [h("dt", null, term), dd];
    }),
  );
}

async function loadQuota() {
  try {
    renderQuota(await api.getQuota());
  } catch (err) {
    showNotice(describeError(err));
  }
}

// --- Wiring ----------------------------------------------------------------------------------------

el.composer.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = el.input.value;
  if (!text.trim() || state.live) return;
  el.input.value = "";
  send(text);
});

// Enter sends, Shift+Enter is a new line (and Enter while an IME is composing is not a send).
el.input.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    el.composer.requestSubmit();
  }
});

el.stop.addEventListener("click", stop);
el.newConversation.addEventListener("click", () => {
  newConversation();
  el.input.focus();
});

el.contextForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  const name = el.contextName.value.trim();
  if (!name) return;
  try {
    const context = await api.createContext(name);
    el.contextName.value = "";
    state.contexts.push(context);
    await selectContext(context.id);
  } catch (err) {
    showNotice(describeError(err));
  }
});

window.addEventListener("pagehide", () => {
  state.unloading = true;
});

async function start() {
  const wanted = readLocation();
  loadQuota();
  try {
    await loadContexts();
  } catch (err) {
    showNotice(describeError(err));
    return;
  }
  const context =
    state.contexts.find((c) => c.id === wanted.contextId) || state.contexts[0] || null;
  if (context) {
    await selectContext(context.id, { conversationId: wanted.conversationId });
  } else {
    renderFlows();
    el.contextName.focus();
  }
  document.body.dataset.ready = "true"; // for tests: the first load is done
}

start();
