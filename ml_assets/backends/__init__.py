"""Compute backends: one module per backend behind the ``Backend`` protocol in ``base``."""
