"""ml_assets: ML pipelines as Dagster assets, one code location per model team.

Importing this package must stay cheap and must not import dagster: the training entrypoint
(``python -m ml_assets.training.runner``) runs inside compute jobs that have neither.
"""
