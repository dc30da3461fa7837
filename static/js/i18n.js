// Translated texts for scripts: the server puts them in <script type="application/json"
// id="i18n-strings"> (data, not code: allowed by our CSP).
let strings = null;

export function t(key, params = {}) {
  if (strings === null) {
    try { strings = JSON.parse(document.getElementById("i18n-strings")?.textContent || "{}"); } catch { strings = {}; }
  }
  const text = strings[key] ?? key;
  return text.replace(/%\((\w+)\)s/g, (_, name) => String(params[name] ?? ""));
}
