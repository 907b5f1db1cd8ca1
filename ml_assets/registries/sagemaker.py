"""SageMaker Model Registry: a model package group per model, a versioned package per version.

What lands where, for model ``m`` registered from job ``j``:

* group ``aws_name(model_package_group_prefix + m)`` (see ``aws_name``), tagged with ``m``;
* ``<storage_root>/<group>/<aws_name(j)>/``: ``model.tar.gz`` (the artifact file at the top of
  the archive, SageMaker's ``ModelDataUrl`` convention), ``lineage.json``, ``metrics.json`` and
  ``notes/<name>-<digest>.json``;
* a package (``ModelPackageVersion`` is the version) with an ``InferenceSpecification`` of
  ``image_uri`` + ``model.tar.gz``, ``ModelApprovalStatus`` ``PendingManualApproval``,
  ``ModelMetrics`` pointing at ``metrics.json``, the description ``ml_assets job_id=<j>``,
  ``CustomerMetadataProperties`` holding the ``s3://`` URIs of lineage, metrics and each note,
  and tags naming the model and job;
* aliases as tags on the group: ``ml_assets.alias.<alias>`` = version.

Why this shape (checked against botocore's SageMaker model and moto 5.2.5's sagemaker backend):

* ``CustomerMetadataProperties`` values may hold only letters, digits, spaces and ``_.:/=+-@``
  (at most 256 characters), so no JSON fits inline, however short: lineage, metrics and notes
  are S3 documents and the metadata holds pointers. Each note has its own content-addressed
  object, so ``annotate`` never rewrites another note's object.
* ``ListModelPackages`` summaries carry the description but not the metadata; keeping the job id
  in the description makes "already registered?" one paged list. ``ClientToken`` (derived from
  group and job) lets SageMaker itself collapse two registrations racing past that list; moto
  ignores it.
* Aliases live in group tags because ``AddTags`` overwrites a key: moving an alias is one call and
  an alias can never name two versions. moto appends rather than overwrites, so when a key
  appears twice the last value wins (SageMaker never returns a key twice).
* moto's ``UpdateModelPackage`` replaces ``CustomerMetadataProperties`` and clears
  ``ModelApprovalStatus`` when they are omitted (SageMaker merges the map and keeps the status),
  so every update sends the full current map and status: correct on both.
* moto serves ``AddTags``/``ListTags`` for group ARNs but not for versioned package ARNs, and
  ``DescribeModelPackage`` returns no tags, so package tags are written once, at creation, for
  people and cost reports; nothing here reads them. ``ModelLifeCycle`` stages are not in moto
  5.2.5 and are not used.

Approval status follows the ``production`` alias: Approved means "this is what serves". Setting
``production`` approves that version and rejects every other Approved version of the group, so
the previous production ends ``Rejected`` (not back in ``PendingManualApproval``, which approval
driven deploy pipelines read as "awaiting review"); rolling back re-approves the older version.
``archived`` rejects a version that is not in production; deleting ``production`` rejects its
holder; other aliases (``challenger``...) are tags only. A new version is
``PendingManualApproval``.

boto3 is imported only when the registry talks to AWS; clients use botocore's standard retry
mode. Credentials come from the AWS default chain (environment, profile, instance role).
"""

from __future__ import annotations

import hashlib
import json
import re
import tarfile
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ml_assets import transport
from ml_assets.registries.base import (
    ARCHIVED,
    PRODUCTION,
    ModelVersion,
    RegistrationRequest,
)
from ml_assets.tags import (
    REGISTRY_ALIAS_PREFIX,
    REGISTRY_JOB_ID_TAG,
    REGISTRY_LINEAGE_TAG,
    REGISTRY_METRICS_TAG,
    REGISTRY_MODEL_TAG,
    REGISTRY_NOTE_PREFIX,
)

APPROVED = "Approved"
REJECTED = "Rejected"
PENDING = "PendingManualApproval"

JOB_DESCRIPTION_PREFIX = "ml_assets job_id="
MAX_METADATA_ENTRIES = 50

# Inference request/response types the package advertises for the sklearn-style containers the
# serving handoff deploys.
CONTENT_TYPES = ["text/csv", "application/json"]

_VALID_NAME = re.compile(r"[a-z0-9](-*[a-z0-9])*")
# The ASCII part of the character class SageMaker allows in tag and metadata keys and values.
_AWS_TEXT = re.compile(r"[A-Za-z0-9 _.:/=+@-]*")


def aws_name(text: str, max_length: int = 63) -> str:
    """``text`` as a SageMaker resource name (letters, digits, hyphens; at most ``max_length``).

    A name that is already valid and lower case is kept as is. Any other is lower-cased, each run
    of other characters becomes one hyphen, and the first 8 hex digits of its sha256 are appended,
    so ``team.model`` and ``team-model`` (or ``Team.model``) never share a name. Lower case only,
    because SageMaker lower-cases names inside some ARNs (versioned model packages among them).
    """
    if len(text) <= max_length and _VALID_NAME.fullmatch(text):
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    stem = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[: max_length - 9].strip("-")
    return f"{stem}-{digest}" if stem else digest


def tag_value(text: str) -> str:
    """``text`` reduced to what a SageMaker tag value accepts (other characters become ``_``)."""
    return re.sub(r"[^A-Za-z0-9 _.:/=+@-]", "_", text)[:256]


def boto3_client(
    service: str, *, region_name: str | None = None, endpoint_url: str | None = None
) -> Any:
    """A boto3 client with botocore's standard retries (throttling and 5xx are retried)."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        service,
        region_name=region_name,
        endpoint_url=endpoint_url,
        config=Config(retries={"mode": "standard", "max_attempts": 8}),
    )


def is_missing(error: Exception) -> bool:
    """Whether a botocore ``ClientError`` says the named SageMaker resource does not exist."""
    response = getattr(error, "response", None) or {}
    details = response.get("Error", {})
    message = str(details.get("Message", "")).lower()
    return details.get("Code") in ("ValidationException", "ResourceNotFound") and any(
        phrase in message for phrase in ("does not exist", "not found", "could not find")
    )


def _checked_key(prefix: str, name: str, what: str) -> str:
    key = f"{prefix}{name}"
    if not name or len(key) > 128 or not _AWS_TEXT.fullmatch(name):
        raise ValueError(
            f"{what} {name!r} cannot be stored in SageMaker: use at most "
            f"{128 - len(prefix)} letters, digits, spaces or _ . : / = + @ -"
        )
    return key


def _bucket_and_key(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    return parsed.netloc, parsed.path.lstrip("/")


class SageMakerRegistry:
    """``ModelRegistry`` backed by the SageMaker Model Registry and an S3 prefix."""

    name = "sagemaker"

    def __init__(
        self,
        storage_root: str,
        image_uri: str,
        model_package_group_prefix: str = "",
        region_name: str | None = None,
        endpoint_url: str | None = None,
    ) -> None:
        """
        Args:
            storage_root: ``s3://bucket/prefix`` where artifacts and their documents go.
            image_uri: the inference image recorded in each package's ``InferenceSpecification``.
            model_package_group_prefix: prepended to model names before they become group names.
            region_name: AWS region; the default chain's region when omitted.
            endpoint_url: another SageMaker/S3 endpoint (e.g. a moto server in tests).
        """
        if transport.scheme_of(storage_root) != "s3" or not urlparse(storage_root).netloc:
            raise ValueError(
                f"storage_root must be an s3://bucket/prefix URI, got {storage_root!r}: "
                "SageMaker reads model data only from S3"
            )
        self.storage_root = storage_root.rstrip("/")
        self.image_uri = image_uri
        self.model_package_group_prefix = model_package_group_prefix
        self.region_name = region_name
        self.endpoint_url = endpoint_url
        self._clients: dict[str, Any] = {}
        self._group_arns: dict[str, str] = {}

    def group_name(self, model_name: str) -> str:
        """The model package group that holds ``model_name``'s versions."""
        return aws_name(f"{self.model_package_group_prefix}{model_name}")

    # -- the ModelRegistry protocol ---------------------------------------------------------

    def register(self, request: RegistrationRequest) -> ModelVersion:
        group = self.group_name(request.model_name)
        group_arn = self._ensure_group(group, request.model_name)
        existing = next((s for s in self._summaries(group) if _job_id(s) == request.job_id), None)
        if existing is not None:
            aliases = self._aliases(group_arn)
            return self._version(request.model_name, self._describe(existing), aliases)
        folder = self._folder(group, request.job_id)
        model_data_url = transport.join(folder, "model.tar.gz")
        self._upload_tarball(Path(request.artifact_path), model_data_url)
        lineage = {**request.lineage, "params": request.params}
        lineage_uri = transport.join(folder, "lineage.json")
        metrics_uri = transport.join(folder, "metrics.json")
        self._put_json(lineage_uri, lineage)
        self._put_json(metrics_uri, request.metrics)
        token = hashlib.sha256(f"{group}\n{request.job_id}".encode()).hexdigest()[:32]
        created = self._sagemaker().create_model_package(
            ModelPackageGroupName=group,
            ModelPackageDescription=f"{JOB_DESCRIPTION_PREFIX}{request.job_id}",
            InferenceSpecification={
                "Containers": [{"Image": self.image_uri, "ModelDataUrl": model_data_url}],
                "SupportedContentTypes": CONTENT_TYPES,
                "SupportedResponseMIMETypes": CONTENT_TYPES,
            },
            ModelApprovalStatus=PENDING,
            ModelMetrics={
                "ModelQuality": {
                    "Statistics": {"ContentType": "application/json", "S3Uri": metrics_uri}
                }
            },
            CustomerMetadataProperties={
                REGISTRY_LINEAGE_TAG: lineage_uri,
                REGISTRY_METRICS_TAG: metrics_uri,
            },
            Tags=[
                {"Key": REGISTRY_MODEL_TAG, "Value": tag_value(request.model_name)},
                {"Key": REGISTRY_JOB_ID_TAG, "Value": tag_value(request.job_id)},
            ],
            ClientToken=token,
        )
        described = self._describe({"ModelPackageArn": created["ModelPackageArn"]})
        return ModelVersion(
            registry=self.name,
            model_name=request.model_name,
            version=str(described["ModelPackageVersion"]),
            uri=described["ModelPackageArn"],
            job_id=request.job_id,
            metrics=request.metrics,
            lineage=lineage,
        )

    def list_versions(self, model_name: str) -> list[ModelVersion]:
        group = self.group_name(model_name)
        group_arn = self._group_arn(group)
        if group_arn is None:
            return []
        aliases = self._aliases(group_arn)
        return [
            self._version(model_name, self._describe(s), aliases) for s in self._summaries(group)
        ]

    def get_version(self, model_name: str, version: str) -> ModelVersion | None:
        group = self.group_name(model_name)
        group_arn = self._group_arn(group)
        summary = self._summary(group, version) if group_arn else None
        if group_arn is None or summary is None:
            return None
        return self._version(model_name, self._describe(summary), self._aliases(group_arn))

    def set_alias(self, model_name: str, version: str, alias: str) -> None:
        key = _checked_key(REGISTRY_ALIAS_PREFIX, alias, "alias")
        group = self.group_name(model_name)
        group_arn = self._group_arn(group)
        summaries = self._summaries(group) if group_arn else []
        target = next((s for s in summaries if _version_of(s) == version), None)
        if group_arn is None or target is None:
            raise _no_version(model_name, version, group)
        aliases = self._aliases(group_arn)
        if aliases.get(alias) != version:
            self._sagemaker().add_tags(ResourceArn=group_arn, Tags=[{"Key": key, "Value": version}])
        if alias == PRODUCTION:
            # Approve first, then retire: there is never a moment with nothing approved.
            self._set_status(target, APPROVED, f"ml_assets: {PRODUCTION}")
            for other in summaries:
                if other is not target and other.get("ModelApprovalStatus") == APPROVED:
                    self._set_status(
                        other, REJECTED, f"ml_assets: {PRODUCTION} moved to version {version}"
                    )
        elif alias == ARCHIVED and aliases.get(PRODUCTION) != version:
            self._set_status(target, REJECTED, f"ml_assets: {ARCHIVED}")

    def delete_alias(self, model_name: str, alias: str) -> None:
        key = _checked_key(REGISTRY_ALIAS_PREFIX, alias, "alias")
        group = self.group_name(model_name)
        group_arn = self._group_arn(group)
        if group_arn is None:
            return
        self._sagemaker().delete_tags(ResourceArn=group_arn, TagKeys=[key])
        if alias == PRODUCTION:
            for summary in self._summaries(group):
                if summary.get("ModelApprovalStatus") == APPROVED:
                    self._set_status(summary, REJECTED, f"ml_assets: {PRODUCTION} removed")

    def get_by_alias(self, model_name: str, alias: str) -> ModelVersion | None:
        group = self.group_name(model_name)
        group_arn = self._group_arn(group)
        if group_arn is None:
            return None
        aliases = self._aliases(group_arn)
        summary = self._summary(group, aliases[alias]) if alias in aliases else None
        return self._version(model_name, self._describe(summary), aliases) if summary else None

    def annotate(self, model_name: str, version: str, notes: dict[str, Any]) -> None:
        group = self.group_name(model_name)
        summary = self._summary(group, version) if self._group_arn(group) else None
        if summary is None:
            raise _no_version(model_name, version, group)
        described = self._describe(summary)
        job_id = _job_id(described)
        if not job_id:
            raise ValueError(
                f"version {version} of {group} was not registered by ml_assets (its description "
                f"does not start with {JOB_DESCRIPTION_PREFIX!r}), so it has no notes folder"
            )
        metadata = dict(described.get("CustomerMetadataProperties") or {})
        keys = {name: _checked_key(REGISTRY_NOTE_PREFIX, name, "note name") for name in notes}
        if len(metadata.keys() | keys.values()) > MAX_METADATA_ENTRIES:
            raise ValueError(
                f"version {version} of {group} would carry more than {MAX_METADATA_ENTRIES} "
                "metadata entries, SageMaker's limit: use fewer distinct note names"
            )
        folder = transport.join(self._folder(group, job_id), "notes")
        for name, value in notes.items():
            document = json.dumps(value, sort_keys=True, default=str).encode()
            digest = hashlib.sha256(document).hexdigest()[:12]
            uri = transport.join(folder, f"{aws_name(name, 40)}-{digest}.json")
            self._put_bytes(uri, document)
            metadata[keys[name]] = uri
        self._update(described, described.get("ModelApprovalStatus") or PENDING, metadata)

    # -- SageMaker ------------------------------------------------------------------------

    def _client(self, service: str) -> Any:
        if service not in self._clients:
            self._clients[service] = boto3_client(
                service, region_name=self.region_name, endpoint_url=self.endpoint_url
            )
        return self._clients[service]

    def _sagemaker(self) -> Any:
        return self._client("sagemaker")

    def _group_arn(self, group: str) -> str | None:
        """The group's ARN, or ``None`` if it does not exist (an ARN, once seen, is kept)."""
        from botocore.exceptions import ClientError

        if group not in self._group_arns:
            try:
                described = self._sagemaker().describe_model_package_group(
                    ModelPackageGroupName=group
                )
            except ClientError as error:
                if is_missing(error):
                    return None
                raise
            self._group_arns[group] = str(described["ModelPackageGroupArn"])
        return self._group_arns[group]

    def _ensure_group(self, group: str, model_name: str) -> str:
        """The group's ARN, creating the group (tagged with ``model_name``) if it is missing."""
        from botocore.exceptions import ClientError

        arn = self._group_arn(group)
        if arn is not None:
            return arn
        try:
            created = self._sagemaker().create_model_package_group(
                ModelPackageGroupName=group,
                ModelPackageGroupDescription=f"ml_assets model {model_name}",
                Tags=[{"Key": REGISTRY_MODEL_TAG, "Value": tag_value(model_name)}],
            )
        except ClientError:
            arn = self._group_arn(group)  # a concurrent registration may have created it
            if arn is None:
                raise
            return arn
        self._group_arns[group] = str(created["ModelPackageGroupArn"])
        return self._group_arns[group]

    def _summaries(self, group: str) -> list[dict[str, Any]]:
        """Every package of ``group`` (which must exist), oldest version first."""
        pages = self._sagemaker().get_paginator("list_model_packages")
        summaries = [
            summary
            for page in pages.paginate(ModelPackageGroupName=group)
            for summary in page["ModelPackageSummaryList"]
        ]
        return sorted(summaries, key=lambda s: int(s["ModelPackageVersion"]))

    def _summary(self, group: str, version: str) -> dict[str, Any] | None:
        if not version.isdigit():
            return None
        return next((s for s in self._summaries(group) if _version_of(s) == version), None)

    def _describe(self, summary: dict[str, Any]) -> dict[str, Any]:
        described: dict[str, Any] = self._sagemaker().describe_model_package(
            ModelPackageName=summary["ModelPackageArn"]
        )
        return described

    def _aliases(self, group_arn: str) -> dict[str, str]:
        pages = self._sagemaker().get_paginator("list_tags")
        aliases: dict[str, str] = {}
        for page in pages.paginate(ResourceArn=group_arn):
            for tag in page["Tags"]:
                if tag["Key"].startswith(REGISTRY_ALIAS_PREFIX):
                    aliases[tag["Key"].removeprefix(REGISTRY_ALIAS_PREFIX)] = tag["Value"]
        return aliases

    def _set_status(self, summary: dict[str, Any], status: str, description: str) -> None:
        if summary.get("ModelApprovalStatus") == status:
            return
        described = self._describe(summary)
        metadata = dict(described.get("CustomerMetadataProperties") or {})
        self._update(described, status, metadata, description)

    def _update(
        self,
        described: dict[str, Any],
        status: str,
        metadata: dict[str, str],
        approval_description: str | None = None,
    ) -> None:
        """``UpdateModelPackage`` with the full metadata map and a status (see the module doc)."""
        arguments: dict[str, Any] = {
            "ModelPackageArn": described["ModelPackageArn"],
            "ModelApprovalStatus": status,
        }
        description = approval_description or described.get("ApprovalDescription")
        if description:
            arguments["ApprovalDescription"] = description
        if metadata:
            arguments["CustomerMetadataProperties"] = metadata
        self._sagemaker().update_model_package(**arguments)

    def _version(
        self, model_name: str, described: dict[str, Any], aliases: dict[str, str]
    ) -> ModelVersion:
        metadata = described.get("CustomerMetadataProperties") or {}
        version = str(described["ModelPackageVersion"])
        return ModelVersion(
            registry=self.name,
            model_name=model_name,
            version=version,
            uri=described["ModelPackageArn"],
            job_id=_job_id(described),
            metrics=self._get_json(metadata[REGISTRY_METRICS_TAG])
            if REGISTRY_METRICS_TAG in metadata
            else {},
            lineage=self._get_json(metadata[REGISTRY_LINEAGE_TAG])
            if REGISTRY_LINEAGE_TAG in metadata
            else {},
            aliases=sorted(a for a, v in aliases.items() if v == version),
            notes={
                key.removeprefix(REGISTRY_NOTE_PREFIX): self._get_json(uri)
                for key, uri in metadata.items()
                if key.startswith(REGISTRY_NOTE_PREFIX)
            },
        )

    # -- S3 -------------------------------------------------------------------------------

    def _folder(self, group: str, job_id: str) -> str:
        return transport.join(self.storage_root, group, aws_name(job_id))

    def _upload_tarball(self, artifact: Path, uri: str) -> None:
        bucket, key = _bucket_and_key(uri)
        with tempfile.TemporaryDirectory(prefix="ml_assets_sagemaker_") as scratch:
            archive = Path(scratch) / "model.tar.gz"
            with tarfile.open(archive, "w:gz") as tar:
                tar.add(artifact, arcname=artifact.name)
            self._client("s3").upload_file(str(archive), bucket, key)

    def _put_json(self, uri: str, document: Any) -> None:
        self._put_bytes(uri, json.dumps(document, sort_keys=True, default=str).encode())

    def _put_bytes(self, uri: str, data: bytes) -> None:
        bucket, key = _bucket_and_key(uri)
        self._client("s3").put_object(
            Bucket=bucket, Key=key, Body=data, ContentType="application/json"
        )

    def _get_json(self, uri: str) -> Any:
        s3 = self._client("s3")
        bucket, key = _bucket_and_key(uri)
        try:
            body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        except s3.exceptions.NoSuchKey:
            raise transport.ObjectNotFound(
                f"{uri}, named in a SageMaker model package's metadata, is missing"
            ) from None
        return json.loads(body)


def _job_id(package: dict[str, Any]) -> str:
    """The training job in a package's description; empty for packages made elsewhere."""
    description = str(package.get("ModelPackageDescription") or "")
    if not description.startswith(JOB_DESCRIPTION_PREFIX):
        return ""
    return description.removeprefix(JOB_DESCRIPTION_PREFIX)


def _version_of(summary: dict[str, Any]) -> str:
    return str(summary["ModelPackageVersion"])


def _no_version(model_name: str, version: str, group: str) -> ValueError:
    return ValueError(f"{model_name} has no version {version} in model package group {group}")
