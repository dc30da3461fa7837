// The open tail of a streaming answer, formatted as it arrives (docs/protocol.md, "Rendering").
//
// Finished blocks come from the server as sanitised HTML. The tail (the text after `upto`) is
// still open; this shows it with a deliberately small subset of Markdown, building DOM nodes
// only: createElement and textContent, never innerHTML, so model output can never become
// markup here. Anything it does not understand (tables, raw HTML, images, links' targets) stays
// text. When the answer ends the page replaces the whole message with the server's rendering,
// so what is shown at the end is exactly what a reload shows.

const FENCE = /^ {0,3}(`{3,}|~{3,})(.*)$/;
const HEADING = /^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$/;
const BULLET = /^ {0,3}([-*+])[ \t]+(.*)$/;
const ORDERED = /^ {0,3}(\d{1,9})([.)])[ \t]+(.*)$/;
const QUOTE = /^ {0,3}>[ \t]?(.*)$/;
const RULE = /^ {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$/;
const PUNCT = /[\s!-/:-@[-`{-~]/u;

function el(tag, text) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  return node;
}

// --- inline ------------------------------------------------------------------------------------
// Appends the inline rendering of `text` to `parent`: `code`, **strong**/__strong__,
// *em*/_em_, ~~strike~~, [label](target) as its label (the server's sanitiser decides links at
// the end), backslash escapes. An opener without its closer stays text.
export function renderInline(parent, text) {
  let plain = "";
  const flush = () => { if (plain) { parent.append(document.createTextNode(plain)); plain = ""; } };
  let i = 0;
  while (i < text.length) {
    const c = text[i];
    if (c === "\\" && i + 1 < text.length && PUNCT.test(text[i + 1]) && text[i + 1].trim()) {
      plain += text[i + 1];
      i += 2;
      continue;
    }
    if (c === "`") {
      let run = 1;
      while (text[i + run] === "`") run += 1;
      const fence = "`".repeat(run);
      let close = text.indexOf(fence, i + run);
      while (close !== -1 && text[close + run] === "`") {
        let skip = close;
        while (text[skip] === "`") skip += 1;
        close = text.indexOf(fence, skip);
      }
      if (close !== -1) {
        let code = text.slice(i + run, close).replace(/\n/g, " ");
        if (code.length > 2 && code.startsWith(" ") && code.endsWith(" ") && code.trim()) code = code.slice(1, -1);
        flush();
        parent.append(el("code", code));
        i = close + run;
        continue;
      }
      plain += fence;
      i += run;
      continue;
    }
    if (c === "~" && text[i + 1] === "~") {
      const close = closer(text, i + 2, "~~");
      if (close !== -1) {
        flush();
        const node = el("del");
        renderInline(node, text.slice(i + 2, close));
        parent.append(node);
        i = close + 2;
        continue;
      }
    }
    if (c === "*" || c === "_") {
      const double = text[i + 1] === c;
      const mark = double ? c + c : c;
      if (opens(text, i, mark)) {
        const close = closer(text, i + mark.length, mark);
        if (close !== -1) {
          flush();
          const node = el(double ? "strong" : "em");
          renderInline(node, text.slice(i + mark.length, close));
          parent.append(node);
          i = close + mark.length;
          continue;
        }
      }
      plain += mark;
      i += mark.length;
      continue;
    }
    if (c === "[" && text[i - 1] !== "!") {
      const end = text.indexOf("]", i + 1);
      if (end !== -1 && text[end + 1] === "(") {
        const paren = text.indexOf(")", end + 2);
        if (paren !== -1) {
          flush();
          const label = el("span");
          label.className = "tail-link";
          renderInline(label, text.slice(i + 1, end));
          parent.append(label);
          i = paren + 1;
          continue;
        }
      }
    }
    plain += c;
    i += 1;
  }
  flush();
}

// An opener must be followed by a non-space; `_` must not sit inside a word (snake_case).
function opens(text, i, mark) {
  const next = text[i + mark.length];
  if (next === undefined || /\s/.test(next)) return false;
  if (mark[0] === "_" && i > 0 && /[\p{L}\p{N}]/u.test(text[i - 1])) return false;
  return true;
}

// The matching closer: preceded by a non-space, and for `_` not followed by a letter or digit.
function closer(text, from, mark) {
  let at = text.indexOf(mark, from);
  while (at !== -1) {
    const before = text[at - 1];
    const after = text[at + mark.length];
    const single = mark.length === 1 && (after === mark || before === mark);
    const word = mark[0] === "_" && after !== undefined && /[\p{L}\p{N}]/u.test(after);
    if (at > from && !/\s/.test(before) && !single && !word) return at;
    at = text.indexOf(mark, at + mark.length);
  }
  return -1;
}

// --- blocks ------------------------------------------------------------------------------------
// Replaces the children of `target` with the formatted tail `text`.
export function renderTail(target, text) {
  const out = document.createDocumentFragment();
  const lines = text.replace(/\r\n?/g, "\n").replace(/\n+$/, "").split("\n");
  let paragraph = null; // lines of the paragraph being gathered
  let list = null; // the open <ul>/<ol>
  let quote = null; // the open <blockquote>
  let code = null; // {node, marker} while inside a fence

  const endParagraph = () => {
    if (!paragraph) return;
    const p = el("p");
    renderInline(p, paragraph.join("\n"));
    (quote || out).append(p);
    paragraph = null;
  };
  const endAll = () => { endParagraph(); list = null; quote = null; };

  for (const line of lines) {
    if (code) {
      const closing = line.match(FENCE);
      if (closing && closing[1][0] === code.marker[0] && closing[1].length >= code.marker.length && !closing[2].trim()) {
        code = null;
        continue;
      }
      code.node.textContent += (code.started ? "\n" : "") + line;
      code.started = true;
      continue;
    }
    const fence = line.match(FENCE);
    if (fence && !(fence[1][0] === "`" && fence[2].includes("`"))) {
      endAll();
      const block = el("div");
      block.className = "code-block code-block-open";
      const language = fence[2].trim().split(/\s+/)[0];
      const header = el("div");
      header.className = "code-header";
      const lang = el("span", language || "text");
      lang.className = "code-lang";
      header.append(lang);
      const pre = el("pre");
      const node = el("code");
      pre.append(node);
      block.append(header, pre);
      out.append(block);
      code = { node, marker: fence[1], started: false };
      continue;
    }
    if (!line.trim()) { endParagraph(); if (quote) quote = null; continue; }
    const heading = line.match(HEADING);
    if (heading) {
      endAll();
      const h = el(`h${heading[1].length}`);
      renderInline(h, heading[2] || "");
      out.append(h);
      continue;
    }
    if (RULE.test(line) && !paragraph) { endAll(); out.append(el("hr")); continue; }
    const bullet = line.match(BULLET);
    const ordered = bullet ? null : line.match(ORDERED);
    if (bullet || ordered) {
      endParagraph();
      quote = null;
      const tag = bullet ? "ul" : "ol";
      if (!list || list.tagName.toLowerCase() !== tag) {
        list = el(tag);
        if (ordered && ordered[1] !== "1") list.start = Number(ordered[1]);
        out.append(list);
      }
      const item = el("li");
      renderInline(item, bullet ? bullet[2] : ordered[3]);
      list.append(item);
      continue;
    }
    const quoted = line.match(QUOTE);
    if (quoted) {
      if (!quote) { endAll(); quote = el("blockquote"); out.append(quote); }
      if (quoted[1].trim()) (paragraph ||= []).push(quoted[1]);
      else endParagraph();
      continue;
    }
    if (list && /^\s+\S/.test(line) && !paragraph) {
      // A continuation line of the last item.
      const item = list.lastElementChild;
      item.append(document.createTextNode(" "));
      renderInline(item, line.trim());
      continue;
    }
    list = null;
    (paragraph ||= []).push(line.replace(/^ {0,3}/, ""));
  }
  endParagraph();
  target.replaceChildren(out);
}
