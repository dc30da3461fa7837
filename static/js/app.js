// Site-wide behaviour, no inline handlers (the CSP forbids inline scripts).

// Close an open menu when clicking elsewhere, or with Esc (focus goes back to its button).
document.addEventListener("click", (event) => {
  for (const menu of document.querySelectorAll("details.user-menu[open]")) {
    if (!menu.contains(event.target)) menu.removeAttribute("open");
  }
});

// Banners can be dismissed; the layout gives their room back to the page.
document.addEventListener("click", (event) => {
  const button = event.target.closest("[data-dismiss]");
  if (!button) return;
  const banner = button.closest(".flash");
  const stack = banner?.closest(".flash-stack");
  banner?.remove();
  if (stack && !stack.querySelector(".flash")) stack.remove();
});

// --- skip links -------------------------------------------------------------------------
// On a page with a message box, a second skip link goes straight to it.
const composerBox = document.querySelector("[data-composer]");
const skipToComposer = document.querySelector("[data-skip-composer]");
if (composerBox?.id && skipToComposer) {
  skipToComposer.href = `#${composerBox.id}`;
  skipToComposer.hidden = false;
}
for (const link of document.querySelectorAll(".skip-link")) {
  link.addEventListener("click", (event) => {
    const target = document.getElementById(link.hash.slice(1));
    if (!target) return;
    event.preventDefault();
    target.focus();
  });
}

// --- the conversation list as a drawer on phones ------------------------------------------
// Closed, it is off-screen and inert (its links are not tabbable, screen readers skip it);
// open, it takes focus; Esc or the scrim closes it and focus returns to the toggle.
const drawer = document.getElementById("sidebar");
const toggles = [...document.querySelectorAll("[data-drawer-open]")];
const phone = window.matchMedia("(max-width: 800px)");
let returnFocus = null;

const drawerOpen = () => document.body.classList.contains("drawer-open");

// While the drawer covers the page on a phone, the page behind it is inert: Tab stays inside.
const behindDrawer = () => [document.getElementById("pane"), document.querySelector(".topbar"),
  document.querySelector(".flash-stack"), ...document.querySelectorAll(".skip-link")].filter(Boolean);

function syncDrawer() {
  if (!drawer) return;
  const open = drawerOpen();
  const hidden = phone.matches && !open;
  for (const el of behindDrawer()) el.inert = phone.matches && open;
  drawer.inert = hidden;
  if (hidden) drawer.setAttribute("aria-hidden", "true");
  else drawer.removeAttribute("aria-hidden");
  for (const toggle of toggles) toggle.setAttribute("aria-expanded", String(phone.matches && open));
}

function openDrawer(toggle) {
  returnFocus = toggle || document.activeElement;
  document.body.classList.add("drawer-open");
  syncDrawer();
  const first = drawer?.querySelector("a[href], button:not([disabled]), input:not([type=hidden]), summary");
  (first || drawer)?.focus();
}

function closeDrawer() {
  if (!drawerOpen()) return;
  document.body.classList.remove("drawer-open");
  syncDrawer();
  const target = returnFocus && returnFocus.isConnected ? returnFocus : toggles[0];
  returnFocus = null;
  // A hidden toggle (desktop width) cannot take focus; skip it rather than lose focus.
  if (target && target.offsetParent !== null) target.focus();
}

if (drawer) {
  for (const toggle of toggles) {
    toggle.setAttribute("aria-controls", drawer.id);
    toggle.addEventListener("click", () => (drawerOpen() ? closeDrawer() : openDrawer(toggle)));
  }
  for (const el of document.querySelectorAll("[data-drawer-close]")) el.addEventListener("click", closeDrawer);
  phone.addEventListener("change", () => {
    if (!phone.matches) document.body.classList.remove("drawer-open");
    syncDrawer();
  });
  syncDrawer();
}

// Tab wraps around inside the open drawer instead of leaving the page.
const FOCUSABLE = "a[href], button:not([disabled]), input:not([type=hidden]):not([disabled]), select, textarea, summary, [tabindex]:not([tabindex='-1'])";
document.addEventListener("keydown", (event) => {
  if (event.key !== "Tab" || !drawer || !drawerOpen() || !phone.matches) return;
  // checkVisibility also leaves out the insides of closed <details> (which keep their boxes).
  const shown = (el) => (el.checkVisibility ? el.checkVisibility() : el.getClientRects().length > 0);
  const items = [...drawer.querySelectorAll(FOCUSABLE)].filter(shown);
  if (!items.length) return;
  const first = items[0], last = items[items.length - 1];
  const inside = drawer.contains(document.activeElement);
  if (event.shiftKey && (document.activeElement === first || !inside)) {
    event.preventDefault();
    last.focus();
  } else if (!event.shiftKey && (document.activeElement === last || !inside)) {
    event.preventDefault();
    first.focus();
  }
});

document.addEventListener("keydown", (event) => {
  if (event.key !== "Escape" || event.defaultPrevented) return;
  if (drawer && drawerOpen()) {
    event.preventDefault();
    closeDrawer();
    return;
  }
  const menu = document.activeElement?.closest?.("details.user-menu[open]");
  if (menu) {
    menu.removeAttribute("open");
    menu.querySelector("summary")?.focus();
  }
});

// --- the language menu --------------------------------------------------------------------
// A pick with the mouse (or touch) applies at once. From the keyboard, arrow keys only move
// through the languages; Enter applies the choice, and so does leaving the menu (Tab) after
// changing it. Nothing reloads the page while someone is still browsing the list.
for (const select of document.querySelectorAll("select[data-language-select]")) {
  const initial = select.value;
  let fromKeyboard = false;
  let sent = false;
  const apply = () => {
    if (sent || select.value === initial) return;
    sent = true;
    select.form.requestSubmit();
  };
  select.addEventListener("keydown", (event) => {
    fromKeyboard = true;
    if (event.key === "Enter") {
      event.preventDefault();
      apply();
    }
  });
  select.addEventListener("pointerdown", () => { fromKeyboard = false; });
  select.addEventListener("change", () => {
    if (!fromKeyboard) apply();
  });
  select.addEventListener("blur", apply);
}
