// The team page: copy a new invitation link. No inline handlers (strict CSP), no build step.
import { t } from "./i18n.js";

document.addEventListener("click", async (event) => {
  const button = event.target.closest("[data-copy-invite]");
  if (!button) return;
  const text = (document.querySelector("[data-invite-url]")?.textContent || "").trim();
  try {
    await navigator.clipboard.writeText(text);
    button.textContent = t("copied");
  } catch {
    button.textContent = t("copy_failed");
  }
  setTimeout(() => (button.textContent = t("copy")), 1500);
});
for (const button of document.querySelectorAll("[data-copy-invite]")) button.hidden = false;
