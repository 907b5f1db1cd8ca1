"""Every tag name ml_assets writes, in one place.

Three vocabularies, each named for where it lives:

- Dagster tags, on runs and on the instance's events (``/`` separated, as Dagster's own are);
- registry and serving tags, on model versions and endpoints (``.`` separated, which MLflow, W&B
  and SageMaker all accept as keys);
- cloud resource tags, on compute a backend starts, so a job (and its cost) traces back to its
  team and its key (``_`` separated: Databricks cluster tags take no ``/`` or ``.``).
"""

from __future__ import annotations

# Dagster: what an observation records (``submitted``, ``retried``, ``cancelled``...).
EVENT_TAG = "ml_assets/event"
# Dagster: the training job an event or run is about.
JOB_ID_TAG = "ml_assets/job_id"
# Dagster: the team that owns a run, an asset or an event.
TEAM_TAG = "ml_assets/team"
# Dagster: the GPU admission queue entry an event is about (the queued job's name), on the
# queued, admitted and cancel records and on the submission of an admitted job.
ADMISSION_TAG = "ml_assets/admission"

# Registries: the training job whose model a version is; registration is idempotent on it.
REGISTRY_JOB_ID_TAG = "ml_assets.job_id"
# Registries: the version's holdout metrics and lineage, as JSON.
REGISTRY_METRICS_TAG = "ml_assets.metrics"
REGISTRY_LINEAGE_TAG = "ml_assets.lineage"
# Registries: free-text notes (one key per note) and aliases (one key per alias).
REGISTRY_NOTE_PREFIX = "ml_assets.note."
REGISTRY_ALIAS_PREFIX = "ml_assets.alias."
# Registries without model names of their own (SageMaker packages): the model a version is of.
REGISTRY_MODEL_TAG = "ml_assets.model"
# Serving: the registered version an endpoint serves.
SERVING_VERSION_TAG = "ml_assets.version"

# Cloud resources: the team, model, job and idempotency key of a backend's job.
RESOURCE_TEAM_TAG = "ml_assets_team"
RESOURCE_MODEL_TAG = "ml_assets_model"
RESOURCE_JOB_TAG = "ml_assets_job"
RESOURCE_KEY_TAG = "ml_assets_key_hash"
# Vertex AI labels: the hash of the job's idempotency key (keys are not label-safe).
RESOURCE_KEY_LABEL = "ml_assets_key"

# Kubernetes labels and annotations on a backend's Jobs (DNS-prefixed, as Kubernetes asks).
KUBERNETES_TEAM_LABEL = "ml-assets/team"
KUBERNETES_MODEL_LABEL = "ml-assets/model"
KUBERNETES_KEY_HASH_LABEL = "ml-assets/key-hash"
KUBERNETES_KEY_ANNOTATION = "ml-assets/idempotency-key"
KUBERNETES_OUTPUT_ANNOTATION = "ml-assets/output-uri"
KUBERNETES_VERSION_LABEL = "ml-assets/version"
# Kueue's label naming the LocalQueue a Job is submitted to (Kueue suspends it until admitted).
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
