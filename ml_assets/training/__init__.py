"""Code that runs inside a compute job: the function runner, the built-in trainers, the staging
wrapper and the Pipes message plumbing.

Nothing in this package imports dagster or a cloud SDK at module level, because a job's image
has neither; a function trainer's job is started as ``python -m ml_assets.training.runner``.
"""
