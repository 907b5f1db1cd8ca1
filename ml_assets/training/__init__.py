"""Code that runs inside a compute job: estimator construction and the training entrypoint.

Nothing in this package imports dagster or a cloud SDK, because a job's image has neither; the
job is started as ``python -m ml_assets.training.entrypoint --job '<json>'``.
"""
