import { t } from "./i18n.js";

// Images in the composer: file picker, drag and drop, paste. Each image is uploaded (and
// validated by the server) at once; the prompt then refers to it by id.

const csrf = () => document.cookie.split("; ").find((c) => c.startsWith("csrftoken="))?.split("=")[1] || "";

for (const row of document.querySelectorAll("[data-attach]")) setUp(row);

// A file dropped next to the drop zone must not make the browser open it in place of the page
// (and lose what was typed). Drops on the zone itself are handled below, before this runs.
if (document.querySelector("[data-attach]")) {
  const hasFiles = (event) => event.dataTransfer?.types.includes("Files");
  window.addEventListener("dragover", (event) => {
    if (!hasFiles(event) || event.defaultPrevented) return; // the drop zone accepted it
    event.preventDefault();
    event.dataTransfer.dropEffect = "none"; // show "no drop" outside the zone
  });
  window.addEventListener("drop", (event) => { if (hasFiles(event)) event.preventDefault(); });
}

function setUp(row) {
  const form = row.closest("form");
  const thumbs = row.querySelector("[data-thumbs]");
  const input = row.querySelector("[data-file-input]");
  const note = row.querySelector("[data-attach-note]");
  const select = form.querySelector("[data-model-select]");
  const dropZone = document.getElementById("pane") || form;
  const textarea = form.querySelector("[data-composer]");

  const model = () => {
    const option = select?.selectedOptions[0];
    return {
      vision: (option?.dataset.vision ?? row.dataset.vision) === "1",
      requiresImage: (option?.dataset.requiresImage ?? row.dataset.requiresImage) === "1",
      maxImages: Number(option?.dataset.maxImages ?? row.dataset.maxImages ?? 0),
      name: option?.textContent.split(" · ")[0] ?? row.dataset.modelName,
    };
  };
  const count = () => thumbs.querySelectorAll(".thumb").length;

  function explain(message = "") {
    const m = model();
    row.querySelector("[data-attach-button]").hidden = !m.vision;
    if (message) note.textContent = message;
    else if (!m.vision) note.textContent = t("text_only", { model: m.name });
    else if (m.requiresImage) note.textContent = t("needs_image", { model: m.name });
    else note.textContent = t("up_to", { n: m.maxImages });
    note.classList.toggle("attach-error", Boolean(message));
  }

  // A thumbnail's object URL holds the whole file in memory until it is revoked.
  function dropThumb(thumb) {
    const img = thumb.querySelector("img");
    if (img?.src.startsWith("blob:")) URL.revokeObjectURL(img.src);
    thumb.remove();
  }

  function discard(id) {
    fetch(`${row.dataset.uploadUrl}${id}/discard/`, { method: "POST", credentials: "same-origin", headers: { "X-CSRFToken": csrf() } });
  }

  async function upload(file) {
    const m = model();
    if (!m.vision) { explain(t("no_images", { model: m.name })); return; }
    if (count() >= Math.max(m.maxImages, 1)) { explain(t("max_images", { model: m.name, n: m.maxImages })); return; }
    const thumb = document.createElement("div");
    thumb.className = "thumb uploading";
    const img = document.createElement("img");
    img.alt = file.name;
    img.src = URL.createObjectURL(file);
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "thumb-remove";
    remove.setAttribute("aria-label", t("remove_image"));
    remove.textContent = "×";
    thumb.append(img, remove);
    thumbs.append(thumb);
    // Removable at once, also while it uploads: the upload is then discarded when it lands.
    remove.addEventListener("click", () => {
      if (thumb.dataset.id) discard(thumb.dataset.id);
      else thumb.dataset.cancelled = "1";
      dropThumb(thumb);
      explain();
    });
    const body = new FormData();
    body.set("image", file, file.name || "pasted.png");
    let data = {};
    let ok = false;
    try {
      const response = await fetch(row.dataset.uploadUrl, { method: "POST", body, credentials: "same-origin", headers: { "X-CSRFToken": csrf(), Accept: "application/json" } });
      data = await response.json().catch(() => ({}));
      ok = response.ok;
    } catch { data = { error: { message: t("upload_failed") } }; }
    if (thumb.dataset.cancelled) { if (ok) discard(data.id); return; }
    if (!ok) { dropThumb(thumb); explain(data.error?.message || t("refused")); return; }
    thumb.classList.remove("uploading");
    const hidden = document.createElement("input");
    hidden.type = "hidden";
    hidden.name = "attachments";
    hidden.value = data.id;
    thumb.append(hidden);
    thumb.dataset.id = data.id;
    explain();
  }

  input.addEventListener("change", () => { for (const file of input.files) upload(file); input.value = ""; });
  // Keyboard users reach the label (tabindex=0); a hidden input is not focusable itself.
  row.querySelector("[data-attach-button]").addEventListener("keydown", (event) => {
    if (event.key !== "Enter" && event.key !== " ") return;
    event.preventDefault();
    input.click();
  });
  dropZone.addEventListener("dragover", (event) => { if (event.dataTransfer?.types.includes("Files")) { event.preventDefault(); dropZone.classList.add("dragging"); } });
  dropZone.addEventListener("dragleave", () => dropZone.classList.remove("dragging"));
  dropZone.addEventListener("drop", (event) => {
    dropZone.classList.remove("dragging");
    if (!event.dataTransfer?.files.length) return;
    event.preventDefault();
    for (const file of event.dataTransfer.files) {
      // Not an image: a document (static/js/documents.js takes it).
      if (file.type.startsWith("image/")) upload(file);
      else row.dispatchEvent(new CustomEvent("attach:document", { detail: file }));
    }
  });
  textarea?.addEventListener("paste", (event) => {
    const files = [...(event.clipboardData?.files || [])].filter((f) => f.type.startsWith("image/"));
    if (!files.length) return;
    event.preventDefault();
    for (const file of files) upload(file);
  });
  select?.addEventListener("change", () => explain());
  // Refuse to send what the model cannot take, before any request.
  form.addEventListener("submit", (event) => {
    const m = model();
    if (m.requiresImage && count() === 0) { event.preventDefault(); event.stopImmediatePropagation(); explain(t("needs_image", { model: m.name })); }
    else if (!m.vision && count() > 0) { event.preventDefault(); event.stopImmediatePropagation(); explain(t("remove_images", { model: m.name })); }
    else if (thumbs.querySelector(".uploading")) { event.preventDefault(); event.stopImmediatePropagation(); explain(t("wait_upload")); }
  }, true);
  form.addEventListener("composer:sent", () => { for (const thumb of [...thumbs.children]) dropThumb(thumb); explain(); });
  explain();
}
