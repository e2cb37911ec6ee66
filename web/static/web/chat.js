// The chat page: a reference client of the public API, in plain DOM code.
//
// What to read here, if you are writing another client:
//   - send():          a chat turn is a fetch() POST answered with SSE, read by sse.js;
//   - handleEvent():   what each event of the stream means for the UI (docs/api.md#sse-events);
//   - resume():        following a reply with EventSource after the fetch stream broke or
//                      after a reload, without losing or doubling text (docs/api.md#resume-cancel-disconnect);
//   - stop():          cancelling a reply;
//   - regenerate(), edit(): steering a conversation; they stream like send() (runTurn());
//   - Reply:           reply text is untrusted: it is rendered as markdown by markdown.js,
//                      which builds DOM nodes (never HTML), re-rendered once per frame.
//
// Safety rule for the whole file: text from the server (replies, titles, flow names,
// snippets, error messages) is put into the page with textContent / text nodes (or
// markdown.js, which does the same), never innerHTML.

import * as api from "./api.js";
import { renderMarkdown } from "./markdown.js";
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
  rename: $("rename"),
  titleForm: $("title-form"),
  titleInput: $("title-input"),
  titleCancel: $("title-cancel"),
  exportBox: $("export"),
  exportMd: $("export-md"),
  exportJson: $("export-json"),
  searchForm: $("search-form"),
  searchInput: $("search-input"),
  searchHere: $("search-here"),
  searchPanel: $("search-panel"),
  searchStatus: $("search-status"),
  searchResults: $("search-results"),
  searchClose: $("search-close"),
  modelChoice: $("model-choice"),
  modelPicker: $("model-picker"),
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
  flowEvents: new Map(), // flow id -> its history, once loaded
  openHistories: new Set(), // flow ids whose history is shown
  updatedFlows: new Set(), // flow ids the last turn updated (highlighted)
  liveTitles: new Map(), // conversation id -> its latest title (a title event, a rename)
  models: [],
  live: null, // the Reply being streamed into the open conversation, if any
  unloading: false, // the page is going away: do not try to resume anything
};

/** The events of a chat turn's stream, in their order (docs/api.md#sse-events). */
const EVENT_TYPES = [
  "metadata",
  "failover",
  "typing",
  "chunk",
  "flows_extracted",
  "title",
  "done",
  "error",
];

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

/** The text of each message shown (what "Edit" starts from), by its <article>. */
const messageTexts = new WeakMap();

/**
 * An <article> for one message. A user's text goes into a text node as typed; an
 * assistant's reply is rendered as markdown (markdown.js: DOM nodes, never HTML).
 */
function messageElement({ id, role, content, status, provider, model }) {
  const article = h("article", `message message--${role}`);
  if (id) article.dataset.messageId = id;
  const header = h("header", "message__header");
  header.append(h("span", "message__role", ROLE_LABELS[role] || role));
  header.append(h("span", "message__status"));
  if (role === "assistant") header.append(h("span", "message__model", routeName(provider, model)));
  const body = h("div", "message__body");
  article.append(header, body);
  setMessageText(article, content || "");
  const actions = h("div", "message__actions");
  actions.hidden = true; // updateControls() shows what applies
  if (role === "user") {
    actions.append(actionButton("Edit", "Edit this message and send it again", () => openEditor(article)));
  } else if (role === "assistant") {
    actions.append(actionButton("Regenerate", "Write this reply again", () => regenerate(article)));
  }
  article.append(actions);
  setMessageStatus(article, status || "complete");
  return article;
}

function actionButton(text, label, onClick) {
  const button = h("button", "button button--small", text);
  button.type = "button";
  button.title = label;
  button.addEventListener("click", onClick);
  return button;
}

const routeName = (provider, model) => (provider && model ? `${provider}:${model}` : "");

function setMessageText(article, text) {
  messageTexts.set(article, text);
  const body = article.querySelector(".message__body");
  if (article.classList.contains("message--assistant")) {
    body.classList.add("markdown");
    body.replaceChildren(renderMarkdown(text));
  } else {
    body.replaceChildren(document.createTextNode(text));
  }
}

function setMessageStatus(article, status) {
  article.dataset.status = status;
  article.querySelector(".message__status").textContent = STATUS_LABELS[status] || "";
}

/**
 * Show the actions that apply now: "Edit" on user messages the server knows (they have
 * an id), "Regenerate" on the last reply once it has ended; none while a reply streams.
 */
function updateControls() {
  const busy = Boolean(state.live);
  const articles = Array.from(el.messages.querySelectorAll(".message")).filter((a) => !a.hidden);
  const last = articles[articles.length - 1];
  for (const article of articles) {
    const actions = article.querySelector(".message__actions");
    if (!actions) continue;
    const known = Boolean(article.dataset.messageId);
    const editing = article.classList.contains("message--editing");
    actions.hidden = article.classList.contains("message--user")
      ? busy || !known || editing
      : busy || !known || article !== last || article.dataset.status === "streaming";
  }
}

/**
 * The assistant reply being streamed: its DOM, the text shown so far and the id of the
 * last event applied (what a resume starts after).
 */
class Reply {
  constructor({ messageId = null, content = "", retry = null } = {}) {
    this.messageId = messageId;
    this.text = content;
    this.lastEventId = 0;
    this.retry = retry; // what "Retry" does when the reply never started (a function)
    this.finished = false;
    this.detached = false; // the user left the conversation; the server goes on
    this.controller = null; // aborts the fetch stream
    this.source = null; // the EventSource of a resume
    this.userArticle = null; // the user message this turn stored (gets its id from metadata)
    this.replaced = []; // messages this turn supersedes: hidden now, removed on metadata
    this.frame = 0; // a pending render (requestAnimationFrame or timer id)
    this.renderCost = 0; // how long the last render took, in ms
    this.article = messageElement({ id: messageId, role: "assistant", content, status: "streaming" });
    this.body = this.article.querySelector(".message__body");
    // Screen readers announce the reply as it types, politely (after what they are saying).
    this.body.setAttribute("aria-live", "polite");
  }

  /**
   * Append a text delta. The reply is markdown, so the whole text is rendered again
   * (a "**" or a code fence changes what came before it), at most once per animation
   * frame; a long reply whose render is slow is rendered less often.
   */
  append(delta) {
    this.text += delta;
    this.scheduleRender();
  }

  scheduleRender() {
    if (this.frame) return;
    const frame = () => {
      this.frame = 0;
      this.render();
    };
    if (this.renderCost > 8) {
      this.frame = setTimeout(frame, Math.min(this.renderCost * 4, 400));
    } else {
      this.frame = requestAnimationFrame(frame);
    }
  }

  /** Render the text now (and drop a pending render): on every end of the stream. */
  render() {
    if (this.frame) {
      cancelAnimationFrame(this.frame);
      clearTimeout(this.frame);
      this.frame = 0;
    }
    const started = performance.now();
    setMessageText(this.article, this.text);
    this.renderCost = performance.now() - started;
    scrollToEnd();
  }

  /** The route that writes the reply (metadata, failover, done). */
  setRoute(provider, model) {
    const name = routeName(provider, model);
    if (name) this.article.querySelector(".message__model").textContent = name;
  }

  /** A `failover` event: the first route failed before any text, another one answers. */
  failover({ from = {}, to = {}, code = "" }) {
    const from_ = routeName(from.provider, from.model) || "the first model";
    const to_ = routeName(to.provider, to.model) || "another model";
    const note = h("p", "message__note", `${from_} did not answer (${code || "error"}); ${to_} answers instead.`);
    note.setAttribute("role", "status");
    this.article.querySelector(".message__header").after(note);
    this.setRoute(to.provider, to.model);
  }

  setTyping(on) {
    this.article.classList.toggle("message--typing", on);
    el.typing.hidden = !on;
  }

  finish(status) {
    setMessageStatus(this.article, status);
    this.end();
  }

  /** An `error` event (or a stream we could not follow): show it, offer a retry. */
  fail({ message, retryable }) {
    setMessageStatus(this.article, "failed");
    this.end();
    const box = h("div", "message__error");
    box.setAttribute("role", "alert");
    box.append(h("p", null, message || "The reply failed."));
    if (retryable && (this.messageId || this.retry)) {
      const retry = h("button", "button button--small", "Retry");
      retry.type = "button";
      retry.addEventListener("click", () => {
        if (state.live) return;
        box.remove();
        // A reply the server knows is written again in place (regenerate); one that never
        // started (the connection broke first) is sent again.
        if (this.messageId && this.article.isConnected) regenerate(this.article);
        else this.retry();
      });
      box.append(retry);
    }
    this.article.querySelector(".message__actions").before(box);
    scrollToEnd();
  }

  end() {
    this.finished = true;
    this.render();
    this.setTyping(false);
    if (this.source) this.source.close(); // or EventSource reconnects forever
    if (state.live === this) {
      state.live = null;
      setBusy(false);
    } else {
      updateControls();
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
  updateControls();
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
    // A `failover` shares the id of the position it happens at (`typing` start's, before
    // any text: docs/api.md#event-ids), so it is skipped only when it is behind us.
    if (eventId < reply.lastEventId || (eventId === reply.lastEventId && type !== "failover")) {
      return;
    }
    reply.lastEventId = eventId;
  }
  switch (type) {
    case "metadata":
      // The ids the rest of the turn needs: the reply's message id (to stop or resume it)
      // and, for a new conversation, the conversation the server just created.
      reply.messageId = data.message_id;
      reply.article.dataset.messageId = data.message_id;
      reply.setRoute(data.provider, data.model);
      if (reply.userArticle && data.user_message_id) {
        reply.userArticle.dataset.messageId = data.user_message_id;
      }
      // The turn started: the messages it supersedes (regenerate, edit) leave the view.
      for (const node of reply.replaced) node.remove();
      reply.replaced = [];
      el.stop.disabled = false;
      if (data.quota) renderQuota(data.quota);
      if (!state.conversationId && data.conversation_id) {
        state.conversationId = data.conversation_id;
        writeLocation();
        loadConversations().catch(() => {});
      }
      break;
    case "failover":
      reply.failover(data);
      break;
    case "typing":
      reply.setTyping(data.status === "start");
      break;
    case "chunk":
      reply.append(data.content);
      break;
    case "flows_extracted":
      // New flows, and flows the conversation changed ("I booked the flight": done).
      mergeFlows(data.flows || []);
      applyFlowUpdates(data.updated || []);
      break;
    case "title":
      // A generated title for the conversation, after its first reply.
      showLiveTitle(data);
      break;
    case "done":
      reply.setRoute(data.provider, data.model);
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

/** The optional `model` field of a turn: the picker's choice, when it offers one. */
function modelField() {
  return !el.modelChoice.hidden && el.modelPicker.value ? { model: el.modelPicker.value } : {};
}

function send(text) {
  if (state.live) return;
  if (!state.contextId) {
    showNotice("Create or choose a context first.");
    return;
  }
  clearNotice();
  // Server-kept history when the conversation exists; a new one is created from the
  // context with the client-history shape (here just the one user message).
  const body = state.conversationId
    ? { conversation_id: state.conversationId, message: text, ...modelField() }
    : { context_id: state.contextId, messages: [{ role: "user", content: text }], ...modelField() };
  runTurn({
    reply: new Reply({ retry: () => send(text) }),
    userArticle: messageElement({ role: "user", content: text }),
    start: (signal) => api.startTurn(body, { signal }),
    onRefused: () => {
      if (!el.input.value) el.input.value = text; // give the text back
    },
  });
}

/**
 * Regenerate the last reply: a new reply to the same user message. The old one is
 * superseded on the server; here it is hidden while the request starts, and removed once
 * the stream's metadata says the turn began (put back if the server refuses).
 */
function regenerate(article) {
  const messageId = article.dataset.messageId;
  if (state.live || !messageId) return;
  clearNotice();
  const reply = new Reply();
  runTurn({
    reply,
    replaced: [article],
    start: (signal) => api.regenerateMessage(messageId, modelField(), { signal }),
  });
}

/** Edit a user message: it and everything after it are superseded by the new text. */
function edit(article, text) {
  const messageId = article.dataset.messageId;
  if (state.live || !messageId) return;
  clearNotice();
  const replaced = [article];
  for (let node = article.nextElementSibling; node; node = node.nextElementSibling) {
    replaced.push(node);
  }
  runTurn({
    reply: new Reply({ retry: () => send(text) }),
    userArticle: messageElement({ role: "user", content: text }),
    replaced,
    start: (signal) =>
      api.editMessage(messageId, { content: text, ...modelField() }, { signal }),
    onRefused: () => openEditor(article, text),
  });
}

/**
 * Run one turn: show the user's message (if the turn stores one) and the reply being
 * written, start the request with `start(signal)` (a fetch answered with SSE), then read
 * its events. A refusal before the stream (400, 404, 409, 429, 503) or a network failure
 * undoes the view: the turn did not happen.
 */
async function runTurn({ reply, userArticle = null, replaced = [], start, onRefused = null }) {
  reply.userArticle = userArticle;
  reply.replaced = replaced;
  for (const node of replaced) node.hidden = true;
  if (userArticle) el.messages.append(userArticle);
  el.messages.append(reply.article);
  scrollToEnd(true);
  state.live = reply;
  setBusy(true);

  reply.controller = new AbortController();
  let response;
  try {
    response = await start(reply.controller.signal);
  } catch (err) {
    const userLeft = reply.detached; // aborted because another conversation was opened
    reply.detach();
    reply.article.remove();
    if (userArticle) userArticle.remove();
    for (const node of replaced) node.hidden = false;
    updateControls();
    if (!userLeft) {
      if (onRefused) onRefused();
      showNotice(describeError(err));
    }
    return;
  }
  await readFetchStream(reply, response);
}

// --- Editing a user message inline ------------------------------------------------------------

/** Replace a user message's text with an editor: "Send" edits, "Cancel" puts it back. */
function openEditor(article, text = messageTexts.get(article) || "") {
  if (state.live || article.classList.contains("message--editing")) return;
  article.classList.add("message--editing");
  const body = article.querySelector(".message__body");
  body.hidden = true;
  const form = h("form", "message__editor");
  const label = h("label", "visually-hidden", "Edit your message");
  const input = h("textarea");
  input.id = `edit-${article.dataset.messageId}`;
  label.htmlFor = input.id;
  input.maxLength = 10000;
  input.rows = 3;
  input.required = true;
  input.value = text;
  const row = h("div", "row");
  const save = h("button", "button button--small button--primary", "Send");
  save.type = "submit";
  const cancel = h("button", "button button--small", "Cancel");
  cancel.type = "button";
  row.append(save, cancel);
  form.append(label, input, row);
  body.after(form);
  updateControls();
  input.focus();

  const close = () => {
    form.remove();
    body.hidden = false;
    article.classList.remove("message--editing");
    updateControls();
  };
  cancel.addEventListener("click", close);
  input.addEventListener("keydown", (event) => {
    if (event.key === "Escape") close();
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const edited = input.value;
    if (!edited.trim() || state.live) return;
    close();
    edit(article, edited);
  });
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
      button.append(h("span", "list__title", conversationTitle(conversation)));
      button.append(h("span", "list__meta", formatDate(conversation.updated_at || conversation.created_at)));
      if (conversation.id === state.conversationId) button.setAttribute("aria-current", "true");
      button.addEventListener("click", () => openConversation(conversation.id));
      item.append(button);
      return item;
    }),
  );
  renderHeading();
}

function conversationTitle(conversation) {
  return state.liveTitles.get(conversation.id) || conversation.title || "Untitled conversation";
}

/** The open conversation's title, its "Rename" button and its export links. */
function renderHeading() {
  const id = state.conversationId;
  const current = state.conversations.find((c) => c.id === id);
  el.heading.textContent = current
    ? conversationTitle(current)
    : id
      ? state.liveTitles.get(id) || "Conversation"
      : "New conversation";
  el.rename.hidden = !id || !el.titleForm.hidden;
  el.heading.hidden = !el.titleForm.hidden;
  el.exportBox.hidden = !id;
  if (id) {
    el.exportMd.href = api.exportUrl(id, "md");
    el.exportJson.href = api.exportUrl(id, "json");
  }
}

/**
 * A `title` event {conversation_id, title}: the server named the conversation after its
 * first reply (a title people set by PATCH is never replaced, and then no event comes).
 */
function showLiveTitle({ conversation_id: id = state.conversationId, title } = {}) {
  if (!title || !id) return;
  // Kept beside the list: a list loaded just before the event still has the old title.
  state.liveTitles.set(id, title);
  renderConversations();
}

function openTitleEditor() {
  if (!state.conversationId) return;
  el.titleInput.value = el.heading.textContent;
  el.titleForm.hidden = false;
  renderHeading();
  el.titleInput.focus();
  el.titleInput.select();
}

function closeTitleEditor() {
  el.titleForm.hidden = true;
  renderHeading();
}

/** PATCH the title; a title people set is never replaced by a generated one. */
async function saveTitle() {
  const id = state.conversationId;
  const title = el.titleInput.value.trim();
  if (!id || !title) return;
  try {
    const saved = await api.renameConversation(id, title);
    state.liveTitles.set(id, saved.title);
    closeTitleEditor();
    renderConversations();
  } catch (err) {
    showNotice(describeError(err));
  }
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
  state.flowEvents.clear();
  state.openHistories.clear();
  state.updatedFlows.clear();
  writeLocation();
  renderContexts();
  renderFlows();
  el.messages.replaceChildren();
  try {
    await Promise.all([loadConversations(), loadFlows()]);
  } catch (err) {
    showNotice(describeError(err));
    return false;
  }
  if (conversationId && state.conversations.some((c) => c.id === conversationId)) {
    return openConversation(conversationId);
  }
  newConversation();
  return !conversationId;
}

function newConversation() {
  if (state.live) state.live.detach();
  state.conversationId = null;
  el.titleForm.hidden = true;
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
  el.titleForm.hidden = true;
  state.conversationId = conversationId;
  writeLocation();
  renderConversations();
  let messages;
  try {
    messages = await api.listMessages(conversationId);
  } catch (err) {
    showNotice(describeError(err));
    return false;
  }
  if (state.conversationId !== conversationId) return false; // the user moved on meanwhile

  el.messages.replaceChildren();
  let streaming = null;
  let lastUserText = "";
  for (const message of messages) {
    if (message.superseded) continue; // the list leaves them out anyway (docs/api.md#regenerate-and-edit)
    if (message.role === "assistant" && message.status === "streaming") {
      const text = lastUserText;
      const reply = new Reply({ messageId: message.id, content: message.content, retry: () => send(text) });
      reply.lastEventId = TEXT_BASE_ID + codePoints(message.content);
      el.messages.append(reply.article);
      streaming = reply;
    } else {
      el.messages.append(messageElement(message));
    }
    if (message.role === "user") lastUserText = message.content;
  }
  scrollToEnd(true);
  updateControls();
  if (streaming) resume(streaming);
  return true;
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

/** Add or update flows (from `flows_extracted` or a PATCH) of the open context. */
function mergeFlows(flows) {
  for (const flow of flows) {
    if (flow.context_id !== state.contextId) continue;
    const index = state.flows.findIndex((f) => f.id === flow.id);
    if (index === -1) state.flows.push(flow);
    else state.flows[index] = flow;
    state.flowEvents.delete(flow.id); // its history has a new entry
  }
  renderFlows();
}

/**
 * `flows_extracted.updated`: flows the conversation changed, as {id, changes: {field:
 * new value}, flow} ("I booked the flight" marks it done). A flow of this context that
 * the page has not loaded yet makes the list reload.
 */
function applyFlowUpdates(updates) {
  if (!updates.length) return;
  state.updatedFlows.clear();
  let missing = false;
  for (const { id, changes, flow: current } of updates) {
    const index = state.flows.findIndex((f) => f.id === id);
    if (index === -1) {
      missing = missing || !current || current.context_id === state.contextId;
      continue;
    }
    // Each item carries the flow as it is now; `changes` alone is enough too.
    state.flows[index] = current ? current : { ...state.flows[index], ...(changes || {}) };
    state.updatedFlows.add(id);
    state.flowEvents.delete(id);
  }
  renderFlows();
  if (missing) loadFlows().catch(() => {});
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
  if (state.updatedFlows.has(flow.id)) {
    item.classList.add("flow--updated");
    item.dataset.updated = "true";
  }
  item.append(h("p", "flow__title", flow.title));
  const meta = h("p", "flow__meta");
  meta.append(h("span", `badge badge--${flow.priority}`, `${flow.priority} priority`));
  if (flow.due_date) {
    const due = h("time", "flow__due", `due ${flow.due_date}`);
    due.dateTime = flow.due_date;
    meta.append(" ", due);
  }
  item.append(meta);
  const actions = h("div", "row flow__actions");
  if (flow.status === "done") {
    actions.append(h("p", "flow__done", "Done"));
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
    actions.append(button);
  }
  const open = state.openHistories.has(flow.id);
  const toggle = h("button", "button button--small flow__history-toggle", "History");
  toggle.type = "button";
  toggle.setAttribute("aria-expanded", String(open));
  toggle.setAttribute("aria-label", `History of "${flow.title}"`);
  toggle.addEventListener("click", () => {
    if (state.openHistories.has(flow.id)) state.openHistories.delete(flow.id);
    else state.openHistories.add(flow.id);
    renderFlows();
  });
  actions.append(toggle);
  item.append(actions);
  if (open) item.append(flowHistoryElement(flow));
  return item;
}

const FLOW_EVENT_LABELS = {
  created: "Created",
  updated: "Changed",
  done: "Marked done",
  reopened: "Reopened",
};
const ACTOR_LABELS = { user: "by you", extraction: "by the assistant, from the conversation" };

/** A flow's history (GET /flows/{id}/events/), loaded when first shown. */
function flowHistoryElement(flow) {
  const list = h("ol", "flow__history");
  list.setAttribute("aria-label", `History of "${flow.title}"`);
  const events = state.flowEvents.get(flow.id);
  if (!events) {
    list.append(h("li", "hint", "Loading…"));
    api
      .listFlowEvents(flow.id)
      .then((loaded) => {
        state.flowEvents.set(flow.id, loaded);
        if (state.openHistories.has(flow.id)) renderFlows();
      })
      .catch((err) => list.replaceChildren(h("li", "hint", describeError(err))));
    return list;
  }
  if (!events.length) list.append(h("li", "hint", "No history yet."));
  for (const event of events) {
    const item = h("li", "flow-event");
    item.dataset.kind = event.kind;
    const what = FLOW_EVENT_LABELS[event.kind] || event.kind;
    const who = ACTOR_LABELS[event.actor] || (event.actor ? `by ${event.actor}` : "");
    item.append(h("span", "flow-event__what", `${what} ${who}`.trim()));
    if (event.created_at) {
      const when = h("time", "flow-event__when", formatDate(event.created_at));
      when.dateTime = event.created_at;
      item.append(" ", when);
    }
    // A created event's changes are the flow's first fields, shown above already.
    const changes = event.kind === "created" ? [] : Object.entries(event.changes || {});
    if (changes.length) {
      const dl = h("dl", "flow-event__changes");
      for (const [field, value] of changes) {
        dl.append(h("dt", null, field), h("dd", null, describeChange(value)));
      }
      item.append(dl);
    }
    list.append(item);
  }
  return list;
}

/** A change's value for people: plain values as they are, {from, to} pairs as "a → b". */
function describeChange(value) {
  if (value && typeof value === "object" && ("to" in value || "new" in value)) {
    const before = value.from ?? value.old;
    const after = value.to ?? value.new;
    return `${before ?? "—"} → ${after ?? "—"}`;
  }
  return value === null || value === undefined ? "—" : String(value);
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

// --- Search (docs/api.md#search) --------------------------------------------------------------

/**
 * A result's snippet as text with its matches in <mark> elements. The snippet is plain
 * text (untrusted) and `highlights` lists [start, end) ranges of the matches in code
 * points: every piece goes into a text node.
 */
function snippetElement(snippet, highlights = []) {
  const p = h("p", "search-result__snippet");
  const chars = Array.from(String(snippet || "")); // code points, as the server counts
  let at = 0;
  const ranges = [...highlights].sort((a, b) => a[0] - b[0]);
  for (const [start, end] of ranges) {
    if (start < at || end <= start || end > chars.length) continue; // overlapping or out of range
    if (start > at) p.append(document.createTextNode(chars.slice(at, start).join("")));
    p.append(h("mark", null, chars.slice(start, end).join("")));
    at = end;
  }
  if (at < chars.length) p.append(document.createTextNode(chars.slice(at).join("")));
  return p;
}

async function runSearch() {
  const query = el.searchInput.value.trim();
  if (!query) return;
  const contextId = el.searchHere.checked ? state.contextId : null;
  el.searchPanel.hidden = false;
  el.searchStatus.textContent = "Searching…";
  el.searchResults.replaceChildren();
  let answer;
  try {
    answer = await api.search(query, contextId);
  } catch (err) {
    el.searchStatus.textContent = describeError(err);
    return;
  }
  // A page of results ({count, next, previous, results}): the first page is enough here.
  const results = Array.isArray(answer) ? answer : answer.results || [];
  const count = answer.count ?? results.length;
  el.searchStatus.textContent = count
    ? `${count} result${count === 1 ? "" : "s"} for “${query}”${count > results.length ? ` (the best ${results.length} shown)` : ""}`
    : `Nothing found for “${query}”.`;
  el.searchResults.replaceChildren(...results.map(searchResultElement));
}

const RESULT_KIND_LABELS = { message: "Message", flow: "Flow" };

function searchResultElement(result) {
  const kind = result.type;
  const item = h("li");
  const button = h("button", "list__item search-result");
  button.type = "button";
  button.dataset.kind = kind;
  button.dataset.resultId = result.id;
  const contextName = state.contexts.find((c) => c.id === result.context_id)?.name;
  let label = RESULT_KIND_LABELS[kind] || kind;
  if (kind === "message" && result.role) label += ` · ${ROLE_LABELS[result.role] || result.role}`;
  if (result.title) label += ` · ${result.title}`;
  if (contextName) label += ` · ${contextName}`;
  button.append(h("span", "list__meta", label));
  button.append(snippetElement(result.snippet ?? "", result.highlights || []));
  button.addEventListener("click", () => openSearchResult({ ...result, type: kind }));
  item.append(button);
  return item;
}

/** Open what a result points at: the conversation scrolled to the message, or the flow. */
async function openSearchResult(result) {
  clearNotice();
  let contextId = result.context_id;
  if (result.type === "message") {
    const conversationId = result.conversation_id;
    if (!contextId) {
      try {
        contextId = (await api.getConversation(conversationId)).context_id;
      } catch (err) {
        showNotice(describeError(err));
        return;
      }
    }
    let opened = true;
    if (contextId !== state.contextId) {
      opened = await selectContext(contextId, { conversationId });
    } else if (conversationId !== state.conversationId || !findMessage(result.id)) {
      opened = await openConversation(conversationId);
    }
    if (!opened) return;
    const article = findMessage(result.id);
    if (!article) {
      showNotice("That message was replaced (edited or regenerated) and is no longer shown.");
      return;
    }
    spotlight(article, el.messages.querySelectorAll(".message--found"), "message--found");
  } else {
    if (contextId && contextId !== state.contextId) await selectContext(contextId);
    const item = el.flowList.querySelector(`[data-flow-id="${CSS.escape(result.id)}"]`);
    if (item) spotlight(item, el.flowList.querySelectorAll(".flow--found"), "flow--found");
  }
}

function findMessage(messageId) {
  return el.messages.querySelector(`.message[data-message-id="${CSS.escape(messageId)}"]`);
}

/** Scroll to an element and highlight it (and only it). */
function spotlight(node, previous, className) {
  for (const other of previous) other.classList.remove(className);
  node.classList.add(className);
  node.tabIndex = -1;
  node.scrollIntoView({ block: "center" });
  node.focus({ preventScroll: true });
}

// --- Models (docs/api.md#routing) ---------------------------------------------------------------

/** A model's price for people: input / output per million tokens, when it has one. */
function describePrice(price) {
  if (!price) return "";
  const currency = price.currency ? ` ${price.currency}` : "";
  return ` (${price.input_per_mtok} in / ${price.output_per_mtok} out${currency} per M tokens)`;
}

/**
 * The picker offers the allowed models (GET /models/: {id: "provider:model", provider,
 * model, default, price}); it is hidden when there is no choice to make. The default
 * route is preselected, and a turn names a model only when another one is picked.
 */
async function loadModels() {
  let models;
  try {
    models = await api.listModels();
  } catch {
    return; // no choice offered: the server picks
  }
  state.models = models;
  const options = [];
  if (!models.some((model) => model.default)) {
    const option = h("option", null, "Default");
    option.value = "";
    options.push(option);
  }
  for (const model of models) {
    const option = h("option", null, model.id + describePrice(model.price));
    option.value = model.default ? "" : model.id;
    option.selected = Boolean(model.default);
    option.dataset.route = model.id;
    options.push(option);
  }
  el.modelPicker.replaceChildren(...options);
  el.modelChoice.hidden = models.length < 2;
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
el.rename.addEventListener("click", openTitleEditor);
el.titleCancel.addEventListener("click", closeTitleEditor);
el.titleForm.addEventListener("submit", (event) => {
  event.preventDefault();
  saveTitle();
});
el.titleInput.addEventListener("keydown", (event) => {
  if (event.key === "Escape") closeTitleEditor();
});
el.searchForm.addEventListener("submit", (event) => {
  event.preventDefault();
  runSearch();
});
el.searchClose.addEventListener("click", () => {
  el.searchPanel.hidden = true;
  el.searchResults.replaceChildren();
});
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
  loadModels();
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
