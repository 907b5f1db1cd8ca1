"""Model teams: the spec schema and loader, and one folder per team."""
