// Pure text bookkeeping for streamed answers (docs/protocol.md, "Applying deltas").
// Offsets count UTF-16 code units, like JavaScript string lengths.

// Apply one delta. Returns {text, result}: "applied", "duplicate" (nothing new) or "gap"
// (the delta starts past what we have: ignore it and ask the server for a snapshot).
export function applyDelta(text, offset, piece) {
  if (offset > text.length) return { text, result: "gap" };
  if (offset + piece.length <= text.length) return { text, result: "duplicate" };
  return { text: text.slice(0, offset) + piece, result: "applied" };
}

// Apply a snapshot only if it does not take us backwards.
export function applySnapshot(text, snapshotText) {
  return snapshotText.length >= text.length ? snapshotText : text;
}
