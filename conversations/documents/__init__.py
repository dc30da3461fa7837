"""Documents in the conversation: validated by content, text extracted once, cut into passages,
ranked by full-text search when they do not fit the context budget."""
