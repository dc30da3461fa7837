// The chat page: composer, live stream over the websocket, stop, regenerate, branches.
// Protocol: docs/protocol.md. No inline handlers (strict CSP), no build step.
import { t } from "./i18n.js";
import { applyDelta as applyText } from "./stream.js";

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

// --- drawer (phones) and small page behaviours --------------------------------------------
for (const el of document.querySelectorAll("[data-drawer-open]")) el.addEventListener("click", () => document.body.classList.add("drawer-open"));
for (const el of document.querySelectorAll("[data-drawer-close]")) el.addEventListener("click", () => document.body.classList.remove("drawer-open"));

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
for (const textarea of document.querySelectorAll("[data-composer], .edit-form textarea")) {
  textarea.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      textarea.form.requestSubmit();
    }
  });
}
for (const input of document.querySelectorAll("[data-client-id]")) input.value = uuid();

// --- the conversation ---------------------------------------------------------------------
const root = document.getElementById("messages");
if (root) new Conversation(root);

function Conversation(root) {
  const streams = new Map(); // seq -> {el, text, upto}
  const endedEarly = new Set(); // seqs whose final state arrived before their element
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
  let activeSeq = null;

  const atBottom = () => root.scrollHeight - root.scrollTop - root.clientHeight < 80;
  const scrollDown = (force) => { if (force || atBottom()) root.scrollTop = root.scrollHeight; };

  function bodyParts(el) {
    return { blocks: el.querySelector("[data-blocks]"), tail: el.querySelector("[data-tail]") };
  }

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
    activeSeq = seq;
    setBusy(true);
    return stream;
  }

  function setBusy(busy) {
    if (stopButton) stopButton.hidden = !busy;
    if (sendButton) sendButton.disabled = busy;
  }

  function render(stream) {
    const { tail } = bodyParts(stream.el);
    tail.hidden = false;
    tail.textContent = stream.text.slice(stream.upto);
    scrollDown();
  }

  function applyDelta(seq, offset, text) {
    const stream = streams.get(seq);
    if (!stream) { send({ type: "resync", seq }); return; }
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
    blocks.insertAdjacentHTML("beforeend", html);
    stream.upto = upto;
    render(stream);
  }

  function applySnapshot(frame) {
    let stream = streams.get(frame.seq);
    const el = document.getElementById(`m-${frame.seq}`);
    if (!el) return;
    if (!stream) stream = track(el);
    if (frame.text.length < stream.text.length && frame.upto <= stream.upto) return;
    stream.text = frame.text;
    bodyParts(el).blocks.innerHTML = frame.html;
    stream.upto = frame.upto;
    render(stream);
  }

  async function finish(frame) {
    const stream = streams.get(frame.seq);
    streams.delete(frame.seq);
    if (activeSeq === frame.seq) { activeSeq = null; setBusy(false); }
    const el = stream?.el || document.getElementById(`m-${frame.seq}`);
    // A short answer can end before the reply to our own POST has put it on the page.
    if (!el) { endedEarly.add(frame.seq); return; }
    // Replace with the server's rendering of the stored message: exactly what a reload shows.
    await refreshMessage(el);
  }

  async function refreshMessage(el) {
    const url = `${location.pathname.replace(/[^/]*$/, "")}m/${el.dataset.id}/`;
    const response = await fetch(url, { credentials: "same-origin" });
    if (!response.ok) return;
    const fresh = htmlToElement(await response.text());
    if (fresh) { el.replaceWith(fresh); wire(fresh); scrollDown(); }
  }

  async function reloadThread() {
    const response = await fetch(root.dataset.threadUrl, { credentials: "same-origin" });
    if (!response.ok) return;
    root.innerHTML = await response.text();
    wire(root);
    for (const el of root.querySelectorAll('.msg[data-status="queued"], .msg[data-status="streaming"]')) {
      track(el);
      send({ type: "resync", seq: Number(el.dataset.seq) });
    }
    scrollDown(true);
  }

  function wire(scope) {
    for (const form of scope.querySelectorAll("[data-regenerate]")) {
      form.addEventListener("submit", async (event) => {
        event.preventDefault();
        try { await postForm(form.action, form); await reloadThread(); } catch (e) { showError(e.message); }
      });
    }
    for (const form of scope.querySelectorAll("[data-switch]")) {
      form.addEventListener("submit", async (event) => {
        event.preventDefault();
        try { await postForm(form.action, form); await reloadThread(); } catch (e) { showError(e.message); }
      });
    }
    for (const form of scope.querySelectorAll("[data-edit-form]")) {
      form.querySelector("[data-client-id]").value = uuid();
      form.addEventListener("submit", async (event) => {
        event.preventDefault();
        try { await postForm(form.action, form); await reloadThread(); } catch (e) { showError(e.message); }
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
    template.innerHTML = await response.text();
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
    if ((!textarea.value.trim() && !hasImages) || sendButton.disabled) return;
    const idField = composer.querySelector("[data-client-id]");
    showError("");
    sendButton.disabled = true;
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
      const el = document.getElementById(`m-${data.assistant.seq}`);
      wire(el.parentElement === root ? el : root);
      if (endedEarly.delete(data.assistant.seq) || !["queued", "streaming"].includes(el.dataset.status)) {
        await refreshMessage(el);
      } else {
        track(el);
        // Frames sent before the element existed were dropped: ask where the answer stands.
        send({ type: "resync", seq: data.assistant.seq });
      }
      scrollDown(true);
    } catch (e) {
      showError(e.message); // the text stays in the composer: nothing typed is lost
      sendButton.disabled = false;
    }
  });

  stopButton?.addEventListener("click", async () => {
    const el = document.getElementById(`m-${activeSeq}`);
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
      case "hello":
        for (const item of frame.active) {
          const el = document.getElementById(`m-${item.seq}`);
          if (el && !streams.has(item.seq)) track(el);
        }
        if (!frame.active.length && activeSeq !== null) {
          // The answer ended while we were away: show the stored result.
          const el = document.getElementById(`m-${activeSeq}`);
          streams.delete(activeSeq); activeSeq = null; setBusy(false);
          if (el) refreshMessage(el);
        }
        break;
      case "snapshot": applySnapshot(frame); break;
      case "state":
        if (["complete", "stopped", "failed", "interrupted"].includes(frame.status)) finish(frame);
        else if (frame.status === "streaming") {
          const el = document.getElementById(`m-${frame.seq}`);
          if (el && !streams.has(frame.seq)) track(el);
        }
        break;
      case "new":
        if (!document.getElementById(`m-${frame.assistant_seq}`)) reloadThread();
        break;
      case "conversation":
        if (frame.title) document.getElementById("conv-title").textContent = frame.title;
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
  scrollDown(true);
  connect();
}
