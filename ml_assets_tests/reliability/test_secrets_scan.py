"""A team's secret, read from its environment through ``{env: NAME}``, shows up nowhere else.

For each backend, the clinical team's YAML names one credential as ``{env: CLINICAL_...}`` whose
value is a fresh ``s3cr3t-<uuid>``; the variable is set only in this process. The whole chain
then runs as in production: the team's Definitions, the training run in a real instance, the
reconciler until the model is recorded, then evaluation, registration, promotion and the serving
spec. Afterwards the value must appear nowhere the platform writes or sends:

* every file of the instance (its SQLite databases, read as bytes and dumped row by row, and the
  compute logs beside them);
* ``ML_ASSETS_HOME`` (local job folders, the registry, serving specs) and everything else under
  the test's temporary folder: the fakes' job logs, a shared volume, the fake DBFS;
* the object stores held in memory (moto's S3, the GCS emulator);
* what each fake was sent to run a job (the request bodies, so the job's environment as sent);
* every log record of the test process.

Values Dagster Pipes encodes (zlib + base64: the job's context, in its environment and in the
submission record) are decoded and searched too.

Which setting is the secret, per backend (each one the SDK client really uses where it can):

==============  ==============================================================================
local           the Kubernetes API ``token`` of the team's kubernetes section; the model trains
                locally, and the trainer (the team's own function) writes its whole environment
                into its output, so the scan sees whether the token reached the local job
kubernetes      the API ``token``; the fake API server refuses every call without it
sagemaker       ``aws_secret_access_key`` of the client that submits and polls
vertex          no credential setting (ADC only): the team's Databricks ``token`` in the same
                YAML, which must not reach the Vertex job
databricks      the workspace ``token``; the fake refuses every call without it
==============  ==============================================================================

A last test runs ``dagster definitions validate`` over team files that use the variable wrongly,
and checks that the errors name the file and field, and never the value.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import os
import re
import sqlite3
import subprocess
import sys
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml
from ml_assets_testing.pipeline import run_chain, train
from ml_assets_testing.sensor_driver import SensorDriver

from ml_assets import transport
from ml_assets.assets.registration import registry_for
from ml_assets.backends import configured_settings
from ml_assets.backends.settings import UnusableEnvironmentVariable
from ml_assets.registries.base import PRODUCTION
from ml_assets.teams.spec import load_team_spec
from ml_assets_tests.test_backends_end_to_end import CLINICAL, KEYS, location_with_raw_data

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(600)]

EVERY_BACKEND = ["local", "kubernetes", "sagemaker", "vertex", "databricks"]
K8S_TOKEN = "CLINICAL_K8S_TOKEN"
AWS_SECRET = "CLINICAL_AWS_SECRET_ACCESS_KEY"
DATABRICKS_TOKEN = "CLINICAL_DATABRICKS_TOKEN"
PROBE_MODULE = "clinical_env_probe"
# What Dagster Pipes makes of a parameter: zlib-compressed JSON in base64 ("eJ" is zlib's header).
PIPES_ENCODED = re.compile(rb"eJ[A-Za-z0-9+/]{16,}={0,2}")


# --- the scan --------------------------------------------------------------------------------


def places(secret: str, where: str, data: bytes) -> list[str]:
    """Where in ``data`` the secret shows: as it is, or inside a Pipes-encoded value."""
    needle = secret.encode()
    found = [where] if needle in data else []
    for encoded in PIPES_ENCODED.findall(data):
        with contextlib.suppress(binascii.Error, zlib.error, ValueError):
            if needle in zlib.decompress(base64.b64decode(encoded)):
                found.append(f"{where} (in a Dagster Pipes parameter)")
    return found


def scan_tree(secret: str, root: Path) -> list[str]:
    """Every file under ``root`` read as bytes; SQLite databases also dumped statement by
    statement, so a value is found even where the page bytes would hide it."""
    found: list[str] = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        try:
            data = path.read_bytes()
        except OSError:
            continue
        found += places(secret, str(path), data)
        if data.startswith(b"SQLite format 3\x00"):
            with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
                dump = "\n".join(db.iterdump()).encode()
            found += places(secret, f"{path} (rows)", dump)
    return found


def scan_instance(secret: str, instance: dg.DagsterInstance) -> list[str]:
    """The instance's whole storage folder: its run, event log and schedule databases (one
    per run, and the index) and the compute logs beside them."""
    return scan_tree(secret, Path(instance.root_directory))


# --- one world per backend -------------------------------------------------------------------


@dataclass
class World:
    """A backend the clinical team trains on, with the secret in one of its YAML settings."""

    model_backend: str
    backends: dict[str, dict[str, Any]]
    env: dict[str, str]
    requests: Callable[[], list[tuple[str, Any]]] = lambda: []  # what the fake was asked to run
    stores: Callable[[], list[tuple[str, bytes]]] = lambda: []  # object storage held in memory
    probe: bool = False  # the trainer writes its environment into its output


def kubernetes_section(fake: Any, storage_root: Path) -> dict[str, Any]:
    """The team's kubernetes settings for ``fake``, its API token read from the environment."""
    section: dict[str, Any] = fake.settings(str(storage_root)).model_dump(exclude_none=True)
    return {**section, "token": {"env": K8S_TOKEN}}


@contextlib.contextmanager
def idle_cluster(root: Path) -> Iterator[Any]:
    """A Kubernetes API server the team has settings for but never calls."""
    from ml_assets_testing.fake_kubernetes import FakeKubernetes

    with FakeKubernetes(root / "idle_k8s", token="not-the-secret") as fake:
        yield fake


@contextlib.contextmanager
def local(root: Path, secret: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    # The team's code: its training function writes the environment the job got, then fits.
    code = root / "team_code"
    code.mkdir()
    (code / f"{PROBE_MODULE}.py").write_text(
        "import json, os\n"
        "from ml_assets.training.builtin import logistic_regression\n\n\n"
        "def fit(train, hyperparameters, context):\n"
        "    (context.output_dir / 'environ.json').write_text(json.dumps(dict(os.environ)))\n"
        "    return logistic_regression(train, hyperparameters, context)\n"
    )
    monkeypatch.syspath_prepend(str(code))
    path = os.pathsep.join(p for p in (str(code), os.environ.get("PYTHONPATH", "")) if p)
    monkeypatch.setenv("PYTHONPATH", path)
    with idle_cluster(root) as cluster:
        backends = {
            "local": {"pass_env": ["CLINICAL_FEATURE_FLAGS"]},
            # The model trains locally; the cluster's token is only in the environment.
            "kubernetes": kubernetes_section(cluster, root / "unused"),
        }
        yield World(
            "local",
            backends,
            {K8S_TOKEN: secret, "CLINICAL_FEATURE_FLAGS": "passed-on-purpose"},
            probe=True,
        )


@contextlib.contextmanager
def kubernetes(root: Path, secret: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    from ml_assets_testing.fake_kubernetes import FakeKubernetes

    with FakeKubernetes(root / "k8s", token=secret) as fake:

        def requests() -> list[tuple[str, Any]]:
            return [
                (f"Job {name}", fake.job_manifest("ml-jobs", name))
                for name in fake.job_names("ml-jobs")
            ]

        section = kubernetes_section(fake, root / "storage")
        yield World("kubernetes", {"kubernetes": section}, {K8S_TOKEN: secret}, requests)


@contextlib.contextmanager
def sagemaker(root: Path, secret: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    import boto3
    from ml_assets_testing.fake_sagemaker import FAKE_CREDENTIALS, FakeSageMaker, use_fake_aws

    from ml_assets.backends.sagemaker import ENTRYPOINT_ENV_PREFIX

    with FakeSageMaker(root / "sagemaker") as fake:
        use_fake_aws(fake, monkeypatch)
        bucket = fake.create_bucket()
        section = fake.backend_settings(f"s3://{bucket}/ml", sync_seconds=0.5)
        section["aws_access_key_id"] = FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"]
        section["aws_secret_access_key"] = {"env": AWS_SECRET}

        def requests() -> list[tuple[str, Any]]:
            found: list[tuple[str, Any]] = []
            for name, job in fake.training_jobs.items():
                found.append((f"CreateTrainingJob {name}", job.request))
                # A long command is split over several variables: joined, it is one value.
                environment = job.request.get("Environment", {})
                parts = sorted(
                    (int(key.removeprefix(ENTRYPOINT_ENV_PREFIX)), value)
                    for key, value in environment.items()
                    if key.startswith(ENTRYPOINT_ENV_PREFIX)
                )
                found.append((f"{name} entrypoint", "".join(value for _, value in parts)))
            return found

        def stores() -> list[tuple[str, bytes]]:
            s3 = boto3.client("s3", endpoint_url=fake.moto_url, region_name="us-east-1")
            objects = s3.list_objects_v2(Bucket=bucket).get("Contents", [])
            return [
                (
                    f"s3://{bucket}/{item['Key']}",
                    s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read(),
                )
                for item in objects
            ]

        yield World("sagemaker", {"sagemaker": section}, {AWS_SECRET: secret}, requests, stores)


@contextlib.contextmanager
def vertex(root: Path, secret: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    from ml_assets_testing.fake_vertex import FakeVertex, GcsEmulator

    with (
        GcsEmulator(["clinical-training"]) as gcs,
        FakeVertex(root / "vertex", job_env=gcs.env) as fake,
    ):
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs.url)
        section = fake.backend_settings(storage_root="gs://clinical-training/ml", sync_seconds=0.5)
        backends = {
            "vertex": section,
            # Never called: only its token is in the environment.
            "databricks": {"host": "http://127.0.0.1:9", "token": {"env": DATABRICKS_TOKEN}},
        }

        def requests() -> list[tuple[str, Any]]:
            return [(f"CustomJob {job['name']}", job) for job in fake.jobs()]

        def stores() -> list[tuple[str, bytes]]:
            blobs = gcs.client().list_blobs("clinical-training")
            return [(f"gs://clinical-training/{b.name}", b.download_as_bytes()) for b in blobs]

        yield World("vertex", backends, {DATABRICKS_TOKEN: secret}, requests, stores)


@contextlib.contextmanager
def databricks(root: Path, secret: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    from ml_assets_testing.fake_databricks import FakeDatabricks

    with FakeDatabricks(root / "databricks", token=secret) as fake:
        for name in [n for n in os.environ if n.startswith("DATABRICKS_")]:
            monkeypatch.delenv(name)
        monkeypatch.setenv("DATABRICKS_CONFIG_FILE", str(root / "no-databrickscfg"))
        # The DBFS transport reads the workspace from the SDK's own variables, as a platform
        # deploys it; the team's backend reads its token from the team's variable.
        for name, value in fake.client_env.items():
            monkeypatch.setenv(name, value)
        section = fake.backend_settings(storage_root="dbfs:/ml_assets/clinical", sync_seconds=0.5)
        section["token"] = {"env": DATABRICKS_TOKEN}

        def requests() -> list[tuple[str, Any]]:
            return [("runs/submit", body) for body in fake.submitted]

        yield World("databricks", {"databricks": section}, {DATABRICKS_TOKEN: secret}, requests)


WORLDS: dict[str, Callable[..., contextlib.AbstractContextManager[World]]] = {
    "local": local,
    "kubernetes": kubernetes,
    "sagemaker": sagemaker,
    "vertex": vertex,
    "databricks": databricks,
}


def grant_clinical(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A platform policy granting the clinical team every backend, its secrets under
    ``CLINICAL_`` only."""
    policy = {
        "default": {"backends": ["local"], "registries": ["local"]},
        "teams": {
            "clinical": {
                "backends": EVERY_BACKEND,
                "registries": ["local", "mlflow"],
                "secret_prefix": "CLINICAL_",
            }
        },
    }
    path = folder / "platform.yaml"
    path.write_text(yaml.safe_dump(policy))
    monkeypatch.setenv("ML_ASSETS_POLICY", str(path))


@pytest.mark.parametrize("backend", EVERY_BACKEND)
def test_the_teams_secret_appears_nowhere_after_the_whole_chain(
    backend: str,
    instance: dg.DagsterInstance,
    ml_home: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = f"s3cr3t-{uuid.uuid4()}"
    grant_clinical(tmp_path, monkeypatch)
    with WORLDS[backend](tmp_path, secret, monkeypatch) as world:
        for name, value in world.env.items():
            monkeypatch.setenv(name, value)
        transport.reset_clients()
        spec = yaml.safe_load(CLINICAL.read_text())
        spec["registry"] = {"kind": "local"}
        spec["allowed_backends"] = sorted({"local", *world.backends})
        spec["backends"] = world.backends
        model = spec["models"][KEYS.model]
        model["backend"] = world.model_backend
        if world.probe:
            model["trainer"]["function"] = f"{PROBE_MODULE}:fit"
        spec_path, defs = location_with_raw_data(spec, tmp_path, instance)
        assert secret not in spec_path.read_text()

        train(defs, instance, KEYS)
        chain = run_chain(defs, instance, KEYS)
        assert chain.success
        production = registry_for(load_team_spec(spec_path), instance).get_by_alias(
            KEYS.registry_name, PRODUCTION
        )
        assert production is not None
        assert production.lineage["training"]["backend"] == world.model_backend

        requests = world.requests()
        stored = world.stores()

    found = scan_instance(secret, instance)
    found += scan_tree(secret, tmp_path)  # ML_ASSETS_HOME, fakes' logs and storage, the volume
    for where, data in stored:
        found += places(secret, where, data)
    for where, body in requests:
        found += places(secret, f"{backend} request: {where}", json.dumps(body).encode())
    found += places(secret, "log records of this process", caplog.text.encode())
    assert not found, f"the secret leaked into: {found}"

    if backend != "local":
        assert requests, "the fake recorded no job request to scan"
    if world.probe:
        # The scan saw the job's whole environment: the variable passed on purpose is there.
        (environ,) = ml_home.glob("jobs/**/environ.json")
        job_env = json.loads(environ.read_text())
        assert job_env["CLINICAL_FEATURE_FLAGS"] == "passed-on-purpose"
        assert K8S_TOKEN not in job_env


def test_the_scan_finds_a_secret_wherever_it_is_planted(
    instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    """The scan is not blind: a secret in an event's metadata, in a Pipes-encoded value or in
    a plain file is found where it is."""
    from dagster_pipes import encode_param

    secret = f"s3cr3t-{uuid.uuid4()}"
    assert not scan_instance(secret, instance)
    instance.report_runless_asset_event(
        dg.AssetObservation("planted", metadata={"job": dg.MetadataValue.json({"env": secret})})
    )
    (tmp_path / "job.log").write_text(f"token={secret}\n")
    (tmp_path / "spec.json").write_text(json.dumps({"context": encode_param({"k": secret})}))

    in_instance = scan_instance(secret, instance)
    assert any(place.endswith(".db (rows)") for place in in_instance), in_instance
    assert scan_tree(secret, tmp_path) == [
        str(tmp_path / "job.log"),
        f"{tmp_path / 'spec.json'} (in a Dagster Pipes parameter)",
    ]


# --- errors when the team file is wrong ------------------------------------------------------

BAD_SECTIONS: dict[str, dict[str, Any]] = {
    # The secret's variable given to a setting that is a number.
    "number": {"sync_seconds": {"env": K8S_TOKEN}},
    # A setting the backend does not take, holding the secret.
    "unknown": {"api_token": {"env": K8S_TOKEN}},
    # Another team's secret (the policy's prefix refuses it): the variable is set and holds it.
    "foreign": {"token": {"env": "FRAUD_K8S_TOKEN"}},
}


def test_a_bad_team_file_is_refused_without_echoing_the_secret_it_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = f"s3cr3t-{uuid.uuid4()}"
    grant_clinical(tmp_path, monkeypatch)
    with idle_cluster(tmp_path) as cluster:
        section = kubernetes_section(cluster, tmp_path / "storage")
    files = []
    for case, change in BAD_SECTIONS.items():
        spec = yaml.safe_load(CLINICAL.read_text())
        spec["registry"] = {"kind": "local"}
        spec["allowed_backends"] = ["local", "kubernetes"]
        spec["backends"] = {"kubernetes": {**section, **change}}
        spec["models"][KEYS.model]["backend"] = "kubernetes"
        team = tmp_path / case / "team.yaml"
        team.parent.mkdir()
        team.write_text(yaml.safe_dump(spec, sort_keys=False))
        definitions = tmp_path / case / f"{case}_location.py"
        definitions.write_text(
            "from ml_assets.location import team_definitions\n\n"
            f"defs = team_definitions({str(team)!r})\n"
        )
        files += ["-f", str(definitions)]
    env = {**os.environ, K8S_TOKEN: secret, "FRAUD_K8S_TOKEN": secret}
    env["DAGSTER_HOME"] = str(tmp_path / "dagster_home")
    Path(env["DAGSTER_HOME"]).mkdir()
    dagster = Path(sys.executable).with_name("dagster")

    validated = subprocess.run(
        [str(dagster), "definitions", "validate", "--verbose", *files],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )

    output = validated.stdout + validated.stderr
    assert validated.returncode == 1, output
    for case in BAD_SECTIONS:
        # Each location failed with a message naming its file and the field.
        assert f"{tmp_path / case / 'team.yaml'}, line" in output, (case, output)
    assert "backends.kubernetes.sync_seconds" in output
    assert "api_token" in output and "FRAUD_K8S_TOKEN" in output
    assert secret not in output, output
    assert not scan_tree(secret, tmp_path)


# --- a secret its SDK refuses -----------------------------------------------------------------


def test_a_token_read_with_its_files_last_newline_is_never_echoed(
    instance: dg.DagsterInstance,
    ml_home: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A token put in the environment from a file (a mounted Kubernetes Secret, an env file)
    keeps the file's last newline. HTTP clients refuse a header holding one and quote the whole
    header, token and all, in their error, which the failed step would record in the event log
    and its compute log. The chain must get through with the token as meant, quoting it nowhere.
    (databricks-sdk goes through the same header check; one backend shows it.)"""
    caplog.set_level(logging.DEBUG)
    secret = f"s3cr3t-{uuid.uuid4()}"
    grant_clinical(tmp_path, monkeypatch)
    with kubernetes(tmp_path, secret, monkeypatch) as world:
        monkeypatch.setenv(K8S_TOKEN, f"{secret}\n")
        spec = yaml.safe_load(CLINICAL.read_text())
        spec["registry"] = {"kind": "local"}
        spec["allowed_backends"] = ["local", "kubernetes"]
        spec["backends"] = world.backends
        spec["models"][KEYS.model]["backend"] = "kubernetes"
        _, defs = location_with_raw_data(spec, tmp_path, instance)
        submitted = defs.resolve_implicit_global_asset_job_def().execute_in_process(
            instance=instance,
            asset_selection=[KEYS.dataset, KEYS.features, KEYS.trained],
            raise_on_error=False,
        )
        found = scan_instance(secret, instance)
        found += places(secret, "log records of this process", caplog.text.encode())
        assert not found, f"the secret leaked into: {found}"
        assert submitted.success
        reconciler = SensorDriver.of(instance, defs, "clinical_training_reconciler")
        reconciler.tick_until(lambda: instance.get_latest_materialization_event(KEYS.trained), 240)
        requests = world.requests()

    found = scan_instance(secret, instance) + scan_tree(secret, tmp_path)
    for where, body in requests:
        found += places(secret, f"kubernetes request: {where}", json.dumps(body).encode())
    found += places(secret, "log records of this process", caplog.text.encode())
    assert not found, f"the secret leaked into: {found}"


def test_a_secret_no_client_can_send_is_refused_without_showing_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = f"s3cr3t-{uuid.uuid4()}"
    with idle_cluster(tmp_path) as cluster:
        section = kubernetes_section(cluster, tmp_path / "storage")
    monkeypatch.setenv(K8S_TOKEN, f"{secret}\r\nX-Injected: 1")

    with pytest.raises(UnusableEnvironmentVariable) as refused:
        configured_settings("kubernetes", section)

    assert K8S_TOKEN in str(refused.value) and "backends.kubernetes.token" in str(refused.value)
    assert secret not in str(refused.value)
