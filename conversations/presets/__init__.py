"""Presets: a named model, system prompt, parameters and starter prompts, kept personal,
published to a team by its managers, or site-wide by superusers (access.preset_access)."""
