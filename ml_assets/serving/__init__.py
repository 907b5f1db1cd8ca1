"""Serving handoffs: what a deploy of a registered version needs, per serving platform."""
