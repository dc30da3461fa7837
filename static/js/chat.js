// The chat page: composer, live stream over the websocket, stop, regenerate, branches.
// Protocol: docs/protocol.md. No inline handlers (strict CSP), no build step.
import { t } from "./i18n.js";
import { applyDelta as applyText } from "./stream.js";
import { renderTail } from "./tail.js";
import { announce, cancelEdit, focusComposer } from "./shortcuts.js";

const csrf = () => document.cookie.split("; ").find((c) => c.startsWith("csrftoken="))?.split("=")[1] || "";
const uuid = () => (crypto.randomUUID ? crypto.randomUUID() : "10000000-1000-4000-8000-100000000000".replace(/[018]/g, (c) => (c ^ (crypto.getRandomValues(new Uint8Array(1))[0] & (15 >> (c / 4)))).toString(16)));

async function postForm(url, form, extra = {}) {
  const body = form instanceof FormData ? form : new FormData(form || undefined);
  // An empty multipart body is malformed for Django's parser: always send one field.
  for (const [k, v] of Object.entries({ via: "fetch", ...extra })) body.set(k, v);
  const response = await fetch(url, {
    method: "POST", body, credentials: "same-origin",
    headers: { "X-CSRFToken": csrf(), Accept: "application/json" },
  });
  let data = {};
  try { data = await response.json(); } catch { /* not JSON */ }
  if (!response.ok) throw new Error(data.error?.message || `Request failed (${response.status})`);
  return data;
}

function htmlToElement(html) {
  const template = document.createElement("template");
  template.innerHTML = html.trim();
  return template.content.firstElementChild;
}

// --- small page behaviours (the phone drawer is static/js/app.js's) -------------------------

// Rendered answers are cached and shared by readers of every language, so a code block's Copy
// button arrives with the server's default label: the page names it in the reader's language,
// on load and whenever HTML is inserted (streamed blocks, final answers, reloaded threads).
function labelCopyButtons(scope) {
  const label = t("copy");
  for (const button of scope.querySelectorAll("[data-copy]")) {
    if (button.textContent !== label && button.textContent !== t("copied")) button.textContent = label;
  }
}
labelCopyButtons(document);
new MutationObserver((records) => {
  for (const record of records) {
    for (const node of record.addedNodes) if (node.nodeType === Node.ELEMENT_NODE) labelCopyButtons(node.parentElement || node);
  }
}).observe(document.body, { childList: true, subtree: true });

document.addEventListener("click", async (event) => {
  const copy = event.target.closest("[data-copy]");
  if (copy) {
    const code = copy.closest(".code-block")?.querySelector("pre")?.innerText || "";
    await navigator.clipboard?.writeText(code).catch(() => {});
    copy.textContent = t("copied");
    setTimeout(() => (copy.textContent = t("copy")), 1500);
    return;
  }
  const copyMessage = event.target.closest("[data-copy-message]");
  if (copyMessage) {
    const body = copyMessage.closest(".msg")?.querySelector(".msg-body");
    await navigator.clipboard?.writeText(body?.innerText || "").catch(() => {});
  }
});

// Model picker: show the parameters and notes of the chosen model.
for (const select of document.querySelectorAll("[data-model-select]")) {
  const form = select.closest("form");
  const sync = () => {
    const slug = select.value;
    for (const param of form.querySelectorAll(".param")) {
      const applies = param.dataset.models.split(" ").includes(slug);
      param.hidden = !applies;
      param.querySelector("input").disabled = !applies;
      for (const help of param.querySelectorAll(".param-help")) help.hidden = help.dataset.model !== slug;
    }
  };
  select.addEventListener("change", sync);
  sync();
}

// Enter sends, Shift+Enter makes a new line.
function enterSends(textarea) {
  textarea.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      textarea.form.requestSubmit();
    }
  });
}
for (const textarea of document.querySelectorAll("[data-composer]")) enterSends(textarea);
for (const input of document.querySelectorAll("[data-client-id]")) input.value = uuid();

// --- the conversation ---------------------------------------------------------------------

function Conversation(root) {
  // The composer's state has one source of truth: `posting` (our POST is in flight) and
  // `running` (the seq of the answer being written in this conversation, or null). Send and
  // Stop are derived from these two in `showControls` and nowhere else. An answer's end is
  // remembered in `ended` whatever the order things arrive in: the final `state` frame can
  // come before the reply to our own POST has put the answer on the page (a fast answer), and
  // must then free the composer all the same.
  const streams = new Map(); // seq -> {el, text, upto}
  const ended = new Set(); // seqs whose final state has arrived
  const deferredNew = []; // "new" frames that came while our POST was in flight
  const composer = document.getElementById("composer");
  const stopButton = composer?.querySelector("[data-stop]");
  const sendButton = composer?.querySelector("[data-send]");
  const errorBox = composer?.querySelector("[data-composer-error]");
  const status = document.getElementById("live-status");
  let socket = null;
  let received = 0;
  let acked = 0;
  let retry = 0;
  let triedAfterSessionEnd = false;
  let running = null;
  let posting = false;

  const atBottom = () => root.scrollHeight - root.scrollTop - root.clientHeight < 80;
  const scrollDown = (force) => { if (force || atBottom()) root.scrollTop = root.scrollHeight; };

  function showControls() {
    if (stopButton) stopButton.hidden = running === null;
    if (sendButton) sendButton.disabled = posting || running !== null;
    composer?.toggleAttribute("data-busy", posting || running !== null);
  }

  function started(seq) {
    if (ended.has(seq) || running === seq) return;
    running = seq;
    announce(t("answer_started"));
    showControls();
  }

  function stopped(seq) {
    ended.add(seq);
    if (running === seq) running = null;
    showControls();
  }

  function bodyParts(el) {
    return { blocks: el.querySelector("[data-blocks]"), tail: el.querySelector("[data-tail]") };
  }

  // Follow an answer being written: its text, and the composer is busy until it ends.
  function track(el) {
    const seq = Number(el.dataset.seq);
    const known = streams.get(seq);
    if (known && known.el === el) return known;
    const { tail } = bodyParts(el);
    const body = el.querySelector(".msg-body");
    const upto = Number(body.dataset.upto || 0);
    // The page carries the raw text written so far; offsets in deltas count from its start.
    const stream = { el, upto, text: known?.text || body.dataset.text || tail?.textContent || "" };
    streams.set(seq, stream);
    started(seq);
    render(stream, true);
    return stream;
  }

  // Deltas repaint the open tail at most once a frame; finished blocks repaint it at once (the
  // text they took from the tail must not show twice).
  function render(stream, now = false) {
    if (!now) {
      stream.frame ||= requestAnimationFrame(() => { stream.frame = 0; render(stream, true); });
      return;
    }
    if (stream.frame) { cancelAnimationFrame(stream.frame); stream.frame = 0; }
    const { tail } = bodyParts(stream.el);
    if (!tail) return;
    const open = stream.text.slice(stream.upto);
    tail.hidden = !open.trim();
    renderTail(tail, open);
    scrollDown();
  }

  function applyDelta(seq, offset, text) {
    const stream = streams.get(seq);
    if (!stream) { if (!ended.has(seq)) send({ type: "resync", seq }); return; }
    const next = applyText(stream.text, offset, text);
    if (next.result === "gap") { send({ type: "resync", seq }); return; }
    if (next.result === "duplicate") return;
    stream.text = next.text;
    render(stream);
  }

  function applyBlocks(seq, upto, html) {
    const stream = streams.get(seq);
    if (!stream || upto <= stream.upto) return;
    const { blocks } = bodyParts(stream.el);
    blocks.insertAdjacentHTML("beforeend", html); // the server's sanitised rendering
    stream.upto = upto;
    render(stream, true);
  }

  function applySnapshot(frame) {
    if (ended.has(frame.seq)) return;
    let stream = streams.get(frame.seq);
    const el = document.getElementById(`m-${frame.seq}`);
    if (!el) return;
    if (!stream) stream = track(el);
    if (frame.text.length < stream.text.length && frame.upto <= stream.upto) return;
    stream.text = frame.text;
    bodyParts(el).blocks.innerHTML = frame.html; // the server's sanitised rendering
    stream.upto = frame.upto;
    render(stream, true);
  }

  async function finish(frame) {
    const first = !ended.has(frame.seq);
    const stream = streams.get(frame.seq);
    streams.delete(frame.seq);
    stopped(frame.seq);
    if (first) {
      const key = { complete: "answer_finished", stopped: "answer_stopped", interrupted: "answer_interrupted" }[frame.status] || "answer_failed";
      announce(t(key));
    }
    const el = stream?.el?.isConnected ? stream.el : document.getElementById(`m-${frame.seq}`);
    // A short answer can end before the reply to our own POST has put it on the page: the
    // reply sees the seq in `ended` and shows the stored answer then.
    if (!el) return;
    el.dataset.ended = frame.status; // its stored rendering (and data-status) is on its way
    // Replace with the server's rendering of the stored message: exactly what a reload shows.
    await refreshMessage(el);
  }

  async function refreshMessage(el) {
    const url = `${location.pathname.replace(/[^/]*$/, "")}m/${el.dataset.id}/`;
    const response = await fetch(url, { credentials: "same-origin" });
    if (!response.ok) return;
    const fresh = htmlToElement(await response.text());
    if (!fresh || !el.isConnected) return;
    const seq = Number(fresh.dataset.seq);
    el.replaceWith(fresh);
    wire(fresh);
    // Fetched while it was still being written (the final frame is on its way): follow it.
    if (["queued", "streaming"].includes(fresh.dataset.status) && !ended.has(seq)) {
      track(fresh);
      send({ type: "resync", seq });
    }
    scrollDown();
  }

  async function reloadThread() {
    const response = await fetch(root.dataset.threadUrl, { credentials: "same-origin" });
    if (!response.ok) return;
    root.innerHTML = await response.text(); // the server's own rendering of the thread
    wire(root);
    followLive();
    await imagesSized(root);
    scrollDown(true);
  }

  function followLive() {
    for (const el of root.querySelectorAll('.msg[data-status="queued"], .msg[data-status="streaming"]')) {
      const seq = Number(el.dataset.seq);
      if (ended.has(seq)) { refreshMessage(el); continue; }
      track(el);
      send({ type: "resync", seq });
    }
  }

  function wire(scope) {
    sizeImages(scope);
    const forms = (selector) => [...(scope.matches?.(selector) ? [scope] : []), ...scope.querySelectorAll(selector)];
    for (const form of forms("[data-regenerate], [data-switch]")) {
      form.addEventListener("submit", async (event) => {
        event.preventDefault();
        try { await postForm(form.action, form); await reloadThread(); } catch (e) { showError(e.message); }
      });
    }
    for (const form of scope.querySelectorAll("[data-edit-form]")) {
      form.querySelector("[data-client-id]").value = uuid();
      const details = form.closest("details");
      const textarea = form.querySelector("textarea");
      enterSends(textarea);
      details?.addEventListener("toggle", () => { if (details.open) textarea.focus(); });
      form.querySelector("[data-edit-cancel]")?.addEventListener("click", () => cancelEdit(details));
      form.addEventListener("submit", async (event) => {
        event.preventDefault();
        try { await postForm(form.action, form); await reloadThread(); focusComposer(true); } catch (e) { showError(e.message); }
      });
    }
    const older = scope.querySelector?.("[data-load-older]");
    if (older) older.addEventListener("click", loadOlder);
  }

  async function loadOlder(event) {
    const button = event.currentTarget;
    const response = await fetch(`${root.dataset.threadUrl}?before=${button.dataset.before}`, { credentials: "same-origin" });
    if (!response.ok) return;
    const previousHeight = root.scrollHeight;
    const template = document.createElement("template");
    template.innerHTML = await response.text(); // the server's own rendering
    sizeImages(template.content);
    button.replaceWith(template.content);
    wire(root);
    root.scrollTop += root.scrollHeight - previousHeight;
  }

  function showError(message) {
    if (!errorBox) return;
    errorBox.textContent = message;
    errorBox.hidden = !message;
  }

  // Sending ---------------------------------------------------------------------------------
  composer?.addEventListener("submit", async (event) => {
    event.preventDefault();
    const textarea = composer.querySelector("[data-composer]");
    const hasImages = composer.querySelector('input[name="attachments"]');
    if ((!textarea.value.trim() && !hasImages) || posting || running !== null) return;
    const idField = composer.querySelector("[data-client-id]");
    showError("");
    posting = true;
    showControls();
    try {
      const data = await postForm(composer.action, composer);
      textarea.value = "";
      idField.value = uuid();
      composer.dispatchEvent(new CustomEvent("composer:sent"));
      if (data.warnings?.length) status.textContent = data.warnings.join(" ");
      root.querySelector(".empty-thread")?.remove();
      for (const part of [data.user, data.assistant]) {
        if (!document.getElementById(`m-${part.seq}`)) root.insertAdjacentHTML("beforeend", part.html);
      }
      const seq = data.assistant.seq;
      const el = document.getElementById(`m-${seq}`);
      wire(document.getElementById(`m-${data.user.seq}`) || root);
      wire(el);
      if (ended.has(seq) || !["queued", "streaming"].includes(el.dataset.status)) {
        refreshMessage(el);
      } else {
        track(el);
        // Frames sent before the element existed were dropped: ask where the answer stands.
        send({ type: "resync", seq });
      }
      scrollDown(true);
    } catch (e) {
      showError(e.message); // the text stays in the composer: nothing typed is lost
    } finally {
      posting = false;
      showControls();
      // Someone else's prompt (or ours, seen first on the socket) that is still not on the page.
      const missing = deferredNew.splice(0).some((frame) => !document.getElementById(`m-${frame.assistant_seq}`));
      if (missing) reloadThread();
    }
  });

  stopButton?.addEventListener("click", async () => {
    const el = document.getElementById(`m-${running}`);
    focusComposer(true); // Stop goes away once the answer ends: keep the keyboard in the composer
    if (!el) return;
    try { await postForm(`${location.pathname}m/${el.dataset.id}/stop/`, null); } catch (e) { showError(e.message); }
  });

  // The socket ------------------------------------------------------------------------------
  function send(frame) { if (socket?.readyState === WebSocket.OPEN) socket.send(JSON.stringify(frame)); }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    socket = new WebSocket(`${scheme}://${location.host}${root.dataset.ws}`);
    socket.addEventListener("open", () => { retry = 0; status.textContent = ""; document.body.classList.remove("offline"); });
    socket.addEventListener("message", (event) => {
      triedAfterSessionEnd = false;
      received += event.data.length;
      if (received - acked > 32768) { acked = received; send({ type: "ack", bytes: received }); }
      const frame = JSON.parse(event.data);
      if (Array.isArray(frame)) {
        if (frame[0] === "d") applyDelta(frame[1], frame[2], frame[3]);
        else if (frame[0] === "b") applyBlocks(frame[1], frame[2], frame[3]);
        return;
      }
      handle(frame);
    });
    socket.addEventListener("close", (event) => {
      // A session that ended (4401) may have a successor in this browser (a password changed
      // here gets a new session cookie): try once more before saying "signed out".
      if (event.code === 4401 && !triedAfterSessionEnd) {
        triedAfterSessionEnd = true;
        setTimeout(connect, 500);
        return;
      }
      if (event.code === 4403 || event.code === 4401) {
        if (root.dataset.share && event.code === 4403) root.replaceChildren();
        status.textContent = event.code === 4401 ? t("signed_out") : t("no_access");
        document.body.classList.add("offline");
        return;
      }
      status.textContent = t("reconnecting");
      document.body.classList.add("offline");
      received = 0; acked = 0;
      setTimeout(connect, Math.min(10000, 500 * 2 ** retry++));
    });
  }

  function handle(frame) {
    switch (frame.type) {
      case "hello": {
        // A title generated while this page was connecting (or away) came before the socket.
        if (frame.title) showTitle(frame.title);
        const active = new Set(frame.active.map((item) => item.seq));
        for (const seq of active) {
          const el = document.getElementById(`m-${seq}`);
          if (el && !streams.has(seq)) track(el);
        }
        // Answers we followed that are no longer being written ended while we were away: the
        // server answers a resync of an ended answer with its final state (then `finish`).
        const followed = new Set([...streams.keys(), ...(running === null ? [] : [running])]);
        for (const seq of followed) if (!active.has(seq)) send({ type: "resync", seq });
        break;
      }
      case "snapshot": applySnapshot(frame); break;
      case "state":
        if (["complete", "stopped", "failed", "interrupted"].includes(frame.status)) finish(frame);
        else if (frame.status === "streaming") {
          const el = document.getElementById(`m-${frame.seq}`);
          if (el && frame.fallback) refreshMessage(el); // another model took over: its name and notice
          else if (el && !streams.has(frame.seq)) track(el);
        }
        break;
      case "new":
        // While our POST is in flight the "new" may be our own prompt: its reply puts it on
        // the page; look again once it is back.
        if (posting) deferredNew.push(frame);
        else if (!document.getElementById(`m-${frame.assistant_seq}`)) reloadThread();
        break;
      case "conversation":
        if (frame.title) showTitle(frame.title);
        break;
      case "revoked":
        status.textContent = t("gone");
        if (root.dataset.share) root.replaceChildren(); // a revoked link shows nothing more
        break;
      default: break;
    }
  }

  wire(root);
  for (const el of root.querySelectorAll('.msg[data-status="queued"], .msg[data-status="streaming"]')) track(el);
  showControls();
  scrollDown(true);
  // Images have their boxes reserved from their stored size; once they are decoded, look again
  // (a box the stored size could not reserve, a font that changed the text's height).
  imagesSized(root).then(() => scrollDown(true));
  connect();
}

// --- the conversation's title: renamed elsewhere, or generated after the first answer ---------
// The header, the sidebar's current row (its pin mark kept) and the window title follow; the
// `conversation-title` event tells anyone else (nav.js) without a reload.
function showTitle(title) {
  const heading = document.getElementById("conv-title");
  const before = heading ? heading.textContent : "";
  if (heading) heading.textContent = title;
  const label = document.querySelector(".conv-item.current [data-conv-title], .conv-item.current .conv-title");
  if (label) {
    const keep = [...label.querySelectorAll(".pin, .visually-hidden")];
    label.replaceChildren(...keep, document.createTextNode(title));
  }
  if (before && document.title.startsWith(`${before} · `)) {
    document.title = `${title} · ${document.title.slice(before.length + 3)}`;
  }
  document.dispatchEvent(new CustomEvent("conversation-title", { detail: { title } }));
}

// --- images in messages: reserve each box from the stored width and height ------------------
const IMAGE_BOX = 220; // px, the largest side of an image in a message (chat.css)

function sizeImages(scope) {
  for (const img of scope.querySelectorAll?.(".msg-images img") || []) {
    const width = Number(img.getAttribute("width"));
    const height = Number(img.getAttribute("height"));
    if (!(width > 0 && height > 0)) continue;
    const scale = Math.min(1, IMAGE_BOX / width, IMAGE_BOX / height);
    img.style.width = `${Math.max(1, Math.round(width * scale))}px`;
    img.style.height = `${Math.max(1, Math.round(height * scale))}px`;
  }
}

function imagesSized(scope) {
  const pending = [...scope.querySelectorAll(".msg-images img")].filter((img) => !img.complete);
  const loaded = pending.map((img) => new Promise((resolve) => {
    img.addEventListener("load", resolve, { once: true });
    img.addEventListener("error", resolve, { once: true });
  }));
  // Lazy images far above never load on their own: their boxes are reserved anyway.
  return Promise.race([Promise.all(loaded), new Promise((resolve) => setTimeout(resolve, 1500))]);
}

// --- start ------------------------------------------------------------------------------------
const root = document.getElementById("messages");
if (root) new Conversation(root);
focusComposer();
