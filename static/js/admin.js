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

function fix(root) {
  nameSplitInputs(root);
  roleForIcons(root);
}

fix(document);
new MutationObserver((changes) => {
  for (const change of changes) {
    for (const node of change.addedNodes) if (node.nodeType === Node.ELEMENT_NODE) fix(node.parentNode || node);
  }
}).observe(document.body, { childList: true, subtree: true });
