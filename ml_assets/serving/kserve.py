"""A KServe ``InferenceService`` manifest for one registered model version."""

from __future__ import annotations

import re
from typing import Any

from ml_assets.tags import KUBERNETES_MODEL_LABEL, KUBERNETES_VERSION_LABEL


def service_name(model_name: str, version: str) -> str:
    """A DNS-1123 name (at most 63 characters) for ``model_name`` version ``version``."""
    stem = re.sub(r"[^a-z0-9-]+", "-", model_name.lower()).strip("-")[:50].strip("-")
    return f"{stem}-v{version}"


def inference_service(
    model_name: str,
    version: str,
    storage_uri: str,
    *,
    namespace: str,
    model_format: str = "sklearn",
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The manifest: one predictor of ``model_format`` reading its model from ``storage_uri``.

    ``kubectl apply -f`` it (as YAML or JSON) once the model directory is at ``storage_uri``.
    """
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {
            "name": service_name(model_name, version),
            "namespace": namespace,
            "labels": {
                KUBERNETES_MODEL_LABEL: re.sub(r"[^A-Za-z0-9_.-]+", "-", model_name)[:63],
                KUBERNETES_VERSION_LABEL: str(version),
                **(labels or {}),
            },
        },
        "spec": {
            "predictor": {
                "model": {
                    "modelFormat": {"name": model_format},
                    "protocolVersion": "v2",
                    "storageUri": storage_uri,
                }
            }
        },
    }
