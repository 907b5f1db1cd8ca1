"""Sensors: the training-job reconciler."""
