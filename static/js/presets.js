// Presets: a starter prompt sends at once; deleting a preset asks first.
const form = document.querySelector("#new-chat-form");
const composer = form?.querySelector("[data-composer]");
document.querySelector("[data-preset-starters]")?.addEventListener("click", (event) => {
  const button = event.target.closest("[data-starter]");
  if (!button || !composer || !form) return;
  composer.value = button.textContent.trim();
  form.requestSubmit();
});

for (const remove of document.querySelectorAll(".preset-actions form[data-confirm]")) {
  remove.addEventListener("submit", (event) => {
    if (!window.confirm(remove.dataset.confirm)) event.preventDefault();
  });
}
