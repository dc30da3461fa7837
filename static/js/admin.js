// The stock Django admin, made to pass axe-core (tests/e2e/test_accessibility.py). Django's
// widgets build some of their markup in the browser; names are added as it appears.

// The split date/time inputs (last login, date joined) have no label of their own: the field's
// label names neither box. Name each one "<field> — Date" / "<field> — Time".
function nameSplitInputs(root) {
  for (const box of root.querySelectorAll("p.datetime")) {
    const row = box.closest(".form-row, .fieldBox, div");
    const field = row?.querySelector("label")?.textContent.replace(/:\s*$/, "").trim() || "";
    const parts = [...box.childNodes];
    for (const input of box.querySelectorAll("input")) {
      if (input.labels?.length || input.hasAttribute("aria-label")) continue;
      // The text just before the input is its own label ("Date:", "Time:").
      let label = "";
      for (let i = parts.indexOf(input) - 1; i >= 0 && !label; i--) {
        if (parts[i].nodeType === Node.TEXT_NODE) label = parts[i].textContent.replace(/:\s*$/, "").trim();
      }
      input.setAttribute("aria-label", field && label ? `${field} — ${label}` : field || label);
    }
  }
}

// The filter boxes' magnifier icons carry an aria-label on a plain span (not allowed): give
// them the image role their label describes.
function roleForIcons(root) {
  for (const icon of root.querySelectorAll("span.help-tooltip[aria-label]:not([role])")) {
    icon.setAttribute("role", "img");
  }
}

// Fields edited right in a list (list_editable) have no label: name each one after its column
// and its row ("Enabled — Llama 3.2 3B Instruct").
function nameListInputs(root) {
  const table = root.closest?.("#result_list") || root.querySelector?.("#result_list");
  if (!table) return;
  const headers = [...table.querySelectorAll("thead th")].map((th) => th.textContent.trim());
  for (const row of table.querySelectorAll("tbody tr")) {
    const cells = [...row.children];
    const name = row.querySelector("th")?.textContent.trim() || "";
    cells.forEach((cell, index) => {
      for (const input of cell.querySelectorAll("input:not([type=hidden]), select, textarea")) {
        if (input.labels?.length || input.hasAttribute("aria-label")) continue;
        const column = headers[index] || "";
        input.setAttribute("aria-label", name && column ? `${column} — ${name}` : column || name);
      }
    });
  }
}

// Autocomplete fields (select2): the combobox is named by its value only, which is empty until
// something is chosen. Name it by the field's label first.
function nameAutocompletes(root) {
  for (const box of root.querySelectorAll(".select2-selection[role=combobox]")) {
    const container = box.closest(".select2-container");
    const select = container?.previousElementSibling;
    if (!select || select.tagName !== "SELECT" || !select.id) continue;
    const label = document.querySelector(`label[for="${CSS.escape(select.id)}"]`);
    if (!label) continue;
    if (!label.id) label.id = `${select.id}-label`;
    const ids = (box.getAttribute("aria-labelledby") || "").split(/\s+/).filter(Boolean);
    if (!ids.includes(label.id)) box.setAttribute("aria-labelledby", [label.id, ...ids].join(" "));
    // The box showing the chosen value is a read-only textbox of its own: the label names it.
    const shown = box.querySelector(".select2-selection__rendered[role=textbox]");
    if (shown && !shown.hasAttribute("aria-labelledby")) shown.setAttribute("aria-labelledby", label.id);
  }
}

function fix(root) {
  nameSplitInputs(root);
  roleForIcons(root);
  nameListInputs(root);
  nameAutocompletes(root);
}

fix(document);
new MutationObserver((changes) => {
  for (const change of changes) {
    for (const node of change.addedNodes) if (node.nodeType === Node.ELEMENT_NODE) fix(node.parentNode || node);
  }
}).observe(document.body, { childList: true, subtree: true });
