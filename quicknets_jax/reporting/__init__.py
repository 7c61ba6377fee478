"""Tables (Markdown) and figures (PNG) from results dicts."""
