"""Reports: Markdown and figures rendered from a run's results dict (they compute nothing)."""
