// The chat pages' keyboard: focus, the live announcements and the shortcuts help (`?`).
// One keydown listener (window, capture phase, so it sees a key before a menu closes itself),
// and a <dialog> built with createElement/textContent (no markup strings, no inline handlers).
import { t } from "./i18n.js";

const mac = /Mac|iPhone|iPad/.test(navigator.platform || navigator.userAgent);
const MOD = mac ? "⌘" : "Ctrl";

// Put the keyboard in the message box. Without `force` only when nothing else has focus (on
// page load, so that a link or field the user is already in keeps it).
export function focusComposer(force = false) {
  const active = document.activeElement;
  if (!force && active && active !== document.body && active !== document.documentElement) return false;
  const box = [...document.querySelectorAll("[data-composer]")].find((el) => !el.disabled && el.offsetParent !== null);
  if (!box) return false;
  box.focus({ preventScroll: true });
  return true;
}

// Say something politely to screen readers (the page's answer live region).
export function announce(text) {
  let region = document.getElementById("answer-live");
  if (!region) {
    region = document.createElement("div");
    region.id = "answer-live";
    region.className = "visually-hidden";
    region.setAttribute("role", "status");
    region.setAttribute("aria-live", "polite");
    document.body.append(region);
  }
  region.textContent = "";
  // Emptied first and filled a moment later, so that the same words twice are read twice.
  setTimeout(() => { region.textContent = text; }, 30);
}

// Close an open "Edit" of a prompt, forgetting what was typed in it.
export function cancelEdit(details) {
  if (!details) return;
  const textarea = details.querySelector("textarea");
  if (textarea) textarea.value = textarea.defaultValue;
  details.open = false;
  details.querySelector("summary")?.focus();
}

function newChatUrl() {
  return document.querySelector("a[data-new-chat]")?.href || document.querySelector("a.brand")?.href || "/";
}

async function copyLastAnswer() {
  const answers = document.querySelectorAll(".msg-assistant .msg-body");
  const body = answers[answers.length - 1];
  if (!body) return;
  try {
    await navigator.clipboard.writeText(body.innerText.trim());
    announce(t("answer_copied"));
  } catch {
    announce(t("copy_failed"));
  }
}

const SHORTCUTS = () => [
  { keys: [[MOD, "Shift", "O"]], label: t("shortcut_new_chat") },
  { keys: [["Shift", "Esc"], ["/"]], label: t("shortcut_focus") },
  { keys: [["Esc"]], label: t("shortcut_stop") },
  { keys: [[MOD, "Shift", "C"]], label: t("shortcut_copy") },
  { keys: [["?"]], label: t("shortcut_help") },
];

let dialog = null;

function buildDialog() {
  const box = document.createElement("dialog");
  box.className = "shortcuts-dialog";
  box.id = "shortcuts-dialog";
  box.setAttribute("aria-labelledby", "shortcuts-title");
  const heading = document.createElement("h2");
  heading.id = "shortcuts-title";
  heading.textContent = t("shortcuts_title");
  const list = document.createElement("dl");
  list.className = "shortcuts-list";
  for (const { keys, label } of SHORTCUTS()) {
    const term = document.createElement("dt");
    keys.forEach((combo, index) => {
      if (index) term.append(document.createTextNode(` ${t("or")} `));
      combo.forEach((key, position) => {
        if (position) term.append(document.createTextNode(" + "));
        const kbd = document.createElement("kbd");
        kbd.textContent = key;
        term.append(kbd);
      });
    });
    const description = document.createElement("dd");
    description.textContent = label;
    list.append(term, description);
  }
  const close = document.createElement("button");
  close.type = "button";
  close.className = "btn btn-small";
  close.textContent = t("close");
  close.dataset.shortcutsClose = "";
  close.addEventListener("click", () => box.close());
  const actions = document.createElement("div");
  actions.className = "shortcuts-actions";
  actions.append(close);
  box.append(heading, list, actions);
  // A click on the backdrop (outside the box) closes it too.
  box.addEventListener("click", (event) => { if (event.target === box) box.close(); });
  document.body.append(box);
  return box;
}

export function openHelp() {
  dialog ||= buildDialog();
  if (dialog.open) return;
  const before = document.activeElement;
  dialog.addEventListener("close", () => { if (before?.isConnected) before.focus({ preventScroll: true }); }, { once: true });
  dialog.showModal();
  dialog.querySelector("[data-shortcuts-close]").focus();
}

const typing = (target) => target instanceof Element
  && target.closest("input, textarea, select, [contenteditable]:not([contenteditable='false'])");

function onKey(event) {
  if (event.defaultPrevented || event.isComposing) return;
  const mod = event.ctrlKey || event.metaKey;
  const key = event.key;
  if (mod && event.shiftKey && !event.altKey && (key === "O" || key === "o")) {
    event.preventDefault();
    location.assign(newChatUrl());
    return;
  }
  if (mod && event.shiftKey && !event.altKey && (key === "C" || key === "c")) {
    event.preventDefault();
    copyLastAnswer();
    return;
  }
  if (key === "Escape") {
    if (event.shiftKey) { event.preventDefault(); focusComposer(true); return; }
    if (document.querySelector("dialog[open]")) return; // the dialog closes itself
    if (document.body.classList.contains("drawer-open")) return; // app.js closes the drawer
    const menus = [...document.querySelectorAll("details[open]")].filter((d) => !d.matches(".edit-prompt, .system-prompt"));
    if (menus.length) {
      event.preventDefault();
      for (const menu of menus) {
        const inside = menu.contains(document.activeElement);
        menu.open = false;
        if (inside) menu.querySelector("summary")?.focus();
      }
      return;
    }
    const edit = document.querySelector("details.edit-prompt[open]");
    if (edit) { event.preventDefault(); cancelEdit(edit); return; }
    const stop = document.querySelector("[data-stop]");
    if (stop && !stop.hidden) { event.preventDefault(); stop.click(); }
    return;
  }
  if (mod || event.altKey || typing(event.target)) return;
  if (key === "?") { event.preventDefault(); openHelp(); }
  else if (key === "/") { event.preventDefault(); focusComposer(true); }
}

window.addEventListener("keydown", onKey, true);
