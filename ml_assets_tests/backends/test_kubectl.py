"""The real ``kubectl`` against the Kubernetes fake: it lists, describes, reads the logs of and
deletes Jobs that the Kubernetes backend created, through the fake's API discovery."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from ml_assets_testing.fake_kubernetes import FakeKubernetes, job_spec
from ml_assets_testing.job_scripts import py, wait_for_file

from ml_assets.backends.base import JobState

KUBECTL = "/usr/bin/kubectl"
NAMESPACE = "ml-jobs"

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(
        not os.access(KUBECTL, os.X_OK),
        reason=f"the real kubectl is not installed at {KUBECTL} (Debian package kubernetes-client)",
    ),
]


def _wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


def test_kubectl_lists_describes_logs_and_deletes_backend_jobs(tmp_path: Path) -> None:
    storage_root = str(tmp_path / "storage")
    release = tmp_path / "release"
    # No token: kubectl (client-go) sends no bearer token to a plain http:// server.
    with FakeKubernetes(tmp_path / "fake", pending_s=0.0) as fake:
        backend = fake.settings(storage_root, namespace=NAMESPACE).get_backend()
        done_spec = job_spec(
            storage_root,
            py("print('epoch 1 loss 0.50')", "print('epoch 2 loss 0.25')"),
            "kubectl/done",
        )
        waiting_spec = job_spec(
            storage_root, py(wait_for_file(release, timeout=60)), "kubectl/waiting"
        )
        done, waiting = backend.submit(done_spec), backend.submit(waiting_spec)
        assert fake.warnings == []  # the backend's Job bodies carry no field the API drops

        def states() -> dict[str, JobState]:
            return {k: s.state for k, s in backend.poll([done, waiting]).items()}

        _wait(
            lambda: states() == {done.job_id: JobState.SUCCEEDED, waiting.job_id: JobState.RUNNING},
            60,
            "one job to finish and the other to run",
        )

        kubeconfig = fake.kubeconfig(tmp_path / "kubeconfig", namespace=NAMESPACE)
        # kubectl caches discovery under $HOME; a fresh home makes it ask the fake.
        env = {"PATH": os.environ.get("PATH", "/usr/bin"), "HOME": str(tmp_path / "home")}

        def kubectl(*args: str) -> str:
            result = subprocess.run(
                [KUBECTL, "--kubeconfig", str(kubeconfig), *args],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert result.returncode == 0, f"kubectl {' '.join(args)}: {result.stderr}"
            return result.stdout

        # list: server-side printed columns, one row per Job
        listed = kubectl("get", "jobs", "-o", "wide")
        rows = {line.split()[0]: line.split() for line in listed.splitlines()[1:]}
        assert listed.split()[:5] == ["NAME", "STATUS", "COMPLETIONS", "DURATION", "AGE"]
        assert set(rows) == {done.job_id, waiting.job_id}
        assert rows[done.job_id][1:3] == ["Complete", "1/1"]
        assert rows[waiting.job_id][1:3] == ["Running", "0/1"]
        assert "ml-assets:test" in rows[done.job_id]
        as_json = json.loads(kubectl("get", "jobs", "-l", "ml-assets/team=fraud", "-o", "json"))
        assert {item["metadata"]["name"] for item in as_json["items"]} == {
            done.job_id,
            waiting.job_id,
        }
        pods = kubectl("get", "pods", "-l", f"job-name={waiting.job_id}")
        assert f"{waiting.job_id}-" in pods and "Running" in pods and "1/1" in pods

        # describe: the Job's spec, its pod counts and the Job controller's events
        described = kubectl("describe", "job", done.job_id)
        assert f"Name:                        {done.job_id}" in described
        assert "Pods Statuses:               0 Active (0 Ready) / 1 Succeeded / 0 Failed" in (
            described
        )
        assert "ml-assets/idempotency-key: kubectl/done" in described
        (pod,) = [name for name in fake.pod_names(NAMESPACE) if name.startswith(done.job_id)]
        assert f"Created pod: {pod}" in described and "Job completed" in described

        # logs: the pod's output, as the backend reads it too
        logs = kubectl("logs", f"job/{done.job_id}")
        assert "epoch 1 loss 0.50\nepoch 2 loss 0.25\n" in logs
        assert "epoch 2 loss 0.25" in backend.logs(done, tail=5)

        # delete: the running Job and its pod go, and the pod's process is killed
        process = fake.job_process(NAMESPACE, waiting.job_id)
        assert process is not None and process.state == "running"
        deleted = kubectl("delete", "job", waiting.job_id)
        assert deleted.strip() == f'job.batch "{waiting.job_id}" deleted'
        assert fake.job_names(NAMESPACE) == [done.job_id]
        assert not any(name.startswith(waiting.job_id) for name in fake.pod_names(NAMESPACE))
        assert process.state == "cancelled" and process.process is not None
        assert process.process.poll() is not None
        remaining = kubectl("get", "jobs")
        assert done.job_id in remaining and waiting.job_id not in remaining
