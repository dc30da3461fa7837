// Documents in the composer: picker and drop (uploads.js hands over files that are not
// images). Each document is uploaded at once; the server checks it and extracts its text in
// the background; the prompt then refers to it by id. Names are shown as text, never as HTML.

const csrf = () => document.cookie.split("; ").find((c) => c.startsWith("csrftoken="))?.split("=")[1] || "";

for (const row of document.querySelectorAll("[data-attach]")) {
  if (!row.dataset.documentsReady) setUp(row);
}

function setUp(row) {
  row.dataset.documentsReady = "1";
  const form = row.closest("form");
  const chips = row.querySelector("[data-doc-chips]");
  const input = row.querySelector("[data-document-input]");
  const button = row.querySelector("[data-document-button]");
  const note = row.querySelector("[data-attach-note]");
  if (!chips || !input || !button) return;
  const url = chips.dataset.uploadUrl;
  const say = (text) => { note.textContent = text; note.classList.add("attach-error"); };

  function discard(id) {
    fetch(`${url}${id}/discard/`, { method: "POST", credentials: "same-origin", headers: { "X-CSRFToken": csrf() } });
  }

  function describe(chip, data) {
    const label = chip.querySelector(".doc-state");
    const pages = data.pages ? chips.dataset.tPages.replace("%(n)s", String(data.pages)) : "";
    const state = data.status === "ready" ? "" : data.status_label;
    label.textContent = [pages, state].filter(Boolean).map((s) => ` · ${s}`).join("");
    chip.classList.toggle("doc-failed", data.status === "failed");
    if (data.status === "failed") {
      // Nothing could be read from it: it is not sent with the prompt.
      chip.querySelector("input[name=documents]")?.remove();
      if (data.error) say(data.error);
    }
  }

  async function follow(chip, id) {
    for (let i = 0; i < 120 && chip.isConnected; i += 1) {
      const response = await fetch(`${url}${id}/status/`, { credentials: "same-origin" }).catch(() => null);
      const data = response?.ok ? await response.json() : null;
      if (data) describe(chip, data);
      if (!data || data.status !== "pending") return;
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
  }

  async function upload(file) {
    const chip = document.createElement("span");
    chip.className = "doc-chip uploading";
    const name = document.createElement("span");
    name.className = "doc-name";
    name.textContent = `📄 ${file.name}`;
    const state = document.createElement("span");
    state.className = "doc-state muted";
    state.textContent = ` · ${chips.dataset.tUploading}`;
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "doc-remove";
    remove.setAttribute("aria-label", chips.dataset.tRemove);
    remove.textContent = "×";
    chip.append(name, state, remove);
    chips.append(chip);
    remove.addEventListener("click", () => {
      if (chip.dataset.id) discard(chip.dataset.id);
      else chip.dataset.cancelled = "1";
      chip.remove();
    });
    const body = new FormData();
    body.set("document", file, file.name || "document.txt");
    let data = {};
    let ok = false;
    try {
      const response = await fetch(url, { method: "POST", body, credentials: "same-origin", headers: { "X-CSRFToken": csrf(), Accept: "application/json" } });
      data = await response.json().catch(() => ({}));
      ok = response.ok;
    } catch { data = { error: { message: chips.dataset.tFailed } }; }
    if (chip.dataset.cancelled) { if (ok) discard(data.id); return; }
    if (!ok) { chip.remove(); say(data.error?.message || chips.dataset.tFailed); return; }
    chip.classList.remove("uploading");
    chip.dataset.id = data.id;
    const hidden = document.createElement("input");
    hidden.type = "hidden";
    hidden.name = "documents";
    hidden.value = data.id;
    chip.append(hidden);
    describe(chip, data);
    if (data.status === "pending") follow(chip, data.id);
  }

  input.addEventListener("change", () => { for (const file of input.files) upload(file); input.value = ""; });
  button.addEventListener("keydown", (event) => {
    if (event.key !== "Enter" && event.key !== " ") return;
    event.preventDefault();
    input.click();
  });
  row.addEventListener("attach:document", (event) => upload(event.detail));
  form.addEventListener("submit", (event) => {
    if (chips.querySelector(".uploading")) { event.preventDefault(); event.stopImmediatePropagation(); say(chips.dataset.tWait); }
  }, true);
  form.addEventListener("composer:sent", () => { chips.replaceChildren(); });
}
