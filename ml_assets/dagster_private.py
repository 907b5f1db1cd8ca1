"""The only place ml_assets reaches into Dagster's non-public modules.

These names are not part of Dagster's public API, so a Dagster upgrade may move them;
``ml_assets_tests/test_dagster_private.py`` fails on the pinned version if one goes. They are
needed to record a materialization from a sensor with the same data-version provenance a run's
own materialization carries, which no public API writes.
"""

from __future__ import annotations

from dagster._core.definitions.data_version import (
    CODE_VERSION_TAG,
    INPUT_EVENT_POINTER_TAG_PREFIX,
    get_input_data_version_tag,
)

__all__ = ["CODE_VERSION_TAG", "INPUT_EVENT_POINTER_TAG_PREFIX", "get_input_data_version_tag"]
