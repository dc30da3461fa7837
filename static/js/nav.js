// Navigation: the sidebar (time zone, row menus without a reload), the model switcher in a
// conversation's header, and the example prompts of the new-chat page.
// Every form here works without this script; with it, the same endpoints answer JSON.
// No inline handlers (strict CSP), no build step.

import { t } from "./i18n.js";

const csrf = () => document.cookie.split("; ").find((c) => c.startsWith("csrftoken="))?.split("=")[1] || "";

async function postJSON(url, form, submitter) {
  const body = new FormData(form, submitter);
  body.set("via", "fetch"); // never an empty multipart body
  const response = await fetch(url, {
    method: "POST", body, credentials: "same-origin",
    headers: { "X-CSRFToken": csrf(), Accept: "application/json" },
  });
  let data = {};
  try { data = await response.json(); } catch { /* not JSON */ }
  if (!response.ok) {
    const error = new Error(data.error?.message || "");
    error.status = response.status;
    throw error;
  }
  return data;
}

// --- the reader's time zone -----------------------------------------------------------------
// The server groups the sidebar by day ("Today", "Yesterday"...) in the zone this cookie names.
const zone = (() => { try { return Intl.DateTimeFormat().resolvedOptions().timeZone || ""; } catch { return ""; } })();
const cookieZone = document.cookie.split("; ").find((c) => c.startsWith("tz="))?.slice(3);
if (zone && decodeURIComponent(cookieZone || "") !== zone) {
  document.cookie = `tz=${encodeURIComponent(zone)}; path=/; max-age=31536000; SameSite=Lax`;
  // Refreshed only when the server grouped the list in another zone than the reader's.
  const nav = document.querySelector("[data-sidebar]");
  if (nav && nav.dataset.zone !== zone) refreshSidebar(null, { quiet: true });
}

// --- the sidebar ----------------------------------------------------------------------------
function sidebarNav() { return document.querySelector("[data-sidebar]"); }

async function refreshSidebar(focusId = null, { quiet = false } = {}) {
  const nav = sidebarNav();
  const aside = nav?.closest("aside");
  if (!nav || !aside) return;
  // A quiet refresh (the time zone became known) never replaces what the reader is using.
  const busy = () => aside.contains(document.activeElement) || aside.querySelector("details[open]");
  const params = new URLSearchParams();
  for (const [key, name] of [["current", "current"], ["query", "q"], ["archived", "archived"], ["page", "page"]]) {
    if (nav.dataset[key]) params.set(name, nav.dataset[key]);
  }
  const response = await fetch(`${nav.dataset.sidebarUrl}?${params}`, { credentials: "same-origin", headers: { Accept: "text/html" } });
  if (!response.ok) return;
  const html = await response.text();
  if (quiet && busy()) return;
  // The focus moves only when it was in the sidebar (a row action), never away from the
  // composer or another field the reader is typing in.
  const hadFocus = aside.contains(document.activeElement);
  // Our own server's rendering: every user text in it is escaped there.
  const template = document.createElement("template");
  template.innerHTML = html;
  aside.replaceChildren(template.content);
  if (!hadFocus) return;
  const row = focusId && aside.querySelector(`[data-conversation-row="${CSS.escape(focusId)}"] .conv-item`);
  (row || aside.querySelector("#conv-search"))?.focus();
}

function showSidebarError(message) {
  const nav = sidebarNav();
  if (!nav) return;
  let box = nav.querySelector("[data-sidebar-error]");
  if (!box) {
    box = document.createElement("p");
    box.className = "sidebar-error";
    box.setAttribute("role", "alert");
    box.dataset.sidebarError = "";
    nav.prepend(box);
  }
  box.textContent = message || nav.dataset.errorText || "";
}

document.addEventListener("submit", async (event) => {
  const form = event.target.closest("form[data-row-action]");
  if (!form) return;
  const action = form.dataset.rowAction;
  if (action === "delete" && !window.confirm(form.dataset.confirm)) {
    event.preventDefault();
    return;
  }
  event.preventDefault();
  const row = form.closest("[data-conversation-row]");
  const id = row?.dataset.conversationRow;
  const current = sidebarNav()?.dataset.current;
  try {
    const data = await postJSON(form.action, form, event.submitter);
    if (id && id === current) {
      if (action === "delete") { window.location.assign("/"); return; }
      if (action === "rename" && data.title) {
        const heading = document.getElementById("conv-title");
        if (heading) heading.textContent = data.title;
        document.title = document.title.replace(/^.*? · /, `${data.title} · `);
      }
    }
    await refreshSidebar(action === "delete" ? null : id);
  } catch (error) {
    if (error.status === 404) { await refreshSidebar(); return; }
    showSidebarError(error.message);
  }
});

// A title written by the model (chat.js tells): the rename fields start from it.
document.addEventListener("conversation-title", (event) => {
  const title = event.detail?.title;
  if (!title) return;
  const current = sidebarNav()?.dataset.current;
  const field = current && document.querySelector(`[data-conversation-row="${CSS.escape(current)}"] input[name=title]`);
  if (field && document.activeElement !== field) field.value = title;
  const header = document.getElementById("rename-input");
  if (header && document.activeElement !== header) header.value = title;
});

// Menus (the sidebar rows, the conversation header): Esc closes the open one and gives focus
// back to its button; a click elsewhere closes them.
const menuSelector = "details.row-menu[open], details.conv-menu[open]";
// (Captured, so that the menu closes first: the phone drawer around it stays open.)
document.addEventListener("keydown", (event) => {
  if (event.key !== "Escape" || event.defaultPrevented) return;
  const open = event.target.closest?.(menuSelector) || document.querySelector(menuSelector);
  if (!open) return;
  open.removeAttribute("open");
  open.querySelector("summary")?.focus();
  event.preventDefault();
}, true);
document.addEventListener("click", (event) => {
  for (const menu of document.querySelectorAll(menuSelector)) {
    if (!menu.contains(event.target)) menu.removeAttribute("open");
  }
});
// One row menu open at a time.
document.addEventListener("toggle", (event) => {
  const menu = event.target;
  if (!(menu instanceof HTMLDetailsElement) || !menu.open || !menu.matches(".row-menu")) return;
  for (const other of document.querySelectorAll("details.row-menu[open]")) if (other !== menu) other.removeAttribute("open");
}, true);

// --- the model switcher ---------------------------------------------------------------------
for (const form of document.querySelectorAll("form[data-model-switch]")) {
  const select = form.querySelector("[data-model-switch-select]");
  const status = form.querySelector("[data-model-switch-status]");
  const button = form.querySelector("[data-model-switch-button]");
  if (button) button.hidden = true; // with this script a choice applies at once
  let applied = select.value;

  const applyToComposer = (model, notes) => {
    const row = document.querySelector("#composer [data-attach]");
    if (!row) return;
    row.dataset.vision = model.vision ? "1" : "0";
    row.dataset.requiresImage = model.requires_image ? "1" : "0";
    row.dataset.maxImages = String(model.max_images);
    row.dataset.modelName = model.name;
    const attachButton = row.querySelector("[data-attach-button]");
    if (attachButton) attachButton.hidden = !model.vision;
    const note = row.querySelector("[data-attach-note]");
    if (!note) return;
    // The same words the composer uses for a model (static/js/uploads.js), or the server's.
    if (notes.length) note.textContent = notes.join(" ");
    else if (!model.vision) note.textContent = t("text_only", { model: model.name });
    else if (model.requires_image) note.textContent = t("needs_image", { model: model.name });
    else note.textContent = t("up_to", { n: model.max_images });
    note.classList.remove("attach-error");
  };

  let sending = false;
  const submit = async () => {
    if (sending || select.value === applied) return;
    sending = true;
    select.setAttribute("aria-busy", "true");
    try {
      const data = await postJSON(form.action, form);
      applied = data.model.slug;
      status.textContent = [data.message, ...data.notes].join(" ");
      status.classList.add("visually-hidden");
      status.classList.remove("model-switch-error");
      form.dataset.applied = applied;
      applyToComposer(data.model, data.notes);
    } catch (error) {
      select.value = applied; // nothing changed on the server
      status.textContent = error.message || form.dataset.errorText || "";
      status.classList.remove("visually-hidden");
      status.classList.add("model-switch-error");
    } finally {
      sending = false;
      select.removeAttribute("aria-busy");
      // A choice made while the last one was on its way.
      if (select.value !== applied && document.activeElement !== select) submit();
    }
  };
  // A pick with the mouse applies at once. From the keyboard, arrow keys only move through the
  // models; Enter applies the choice, and so does leaving the menu after changing it (the same
  // rule as the language menu), so browsing the list does not switch at every step.
  let fromKeyboard = false;
  select.addEventListener("keydown", (event) => {
    if (event.key === "Enter") {
      event.preventDefault();
      fromKeyboard = false;
      submit();
    } else if (event.key !== "Tab") {
      fromKeyboard = true;
    }
  });
  select.addEventListener("pointerdown", () => { fromKeyboard = false; });
  select.addEventListener("change", () => { if (!fromKeyboard) submit(); });
  select.addEventListener("blur", () => { fromKeyboard = false; submit(); });
  form.addEventListener("submit", (event) => { event.preventDefault(); submit(); });
}

// --- the new-chat page: example prompts -----------------------------------------------------
const examples = document.querySelector("[data-examples]");
if (examples) {
  const select = document.querySelector("#new-chat-form [data-model-select]");
  const composer = document.querySelector("#new-chat-form [data-composer]");
  const sync = () => {
    const kind = select?.selectedOptions[0]?.dataset.kind || "text";
    for (const list of examples.querySelectorAll("[data-example-kind]")) list.hidden = list.dataset.exampleKind !== kind;
  };
  select?.addEventListener("change", sync);
  sync();
  examples.addEventListener("click", (event) => {
    const button = event.target.closest("[data-example]");
    if (!button || !composer) return;
    composer.value = button.textContent.trim();
    composer.dispatchEvent(new Event("input", { bubbles: true }));
    composer.focus();
    composer.setSelectionRange(composer.value.length, composer.value.length);
  });
}
