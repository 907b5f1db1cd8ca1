"""Moving job inputs and results between this machine and a backend's object storage.

One small interface, ``ObjectStore``, with one implementation per URI scheme:

==========  ===========================================  ====================================
scheme      client                                       configured by
==========  ===========================================  ====================================
(a path),   the local file system                        -
``file://``
``s3://``   boto3                                        the AWS default chain, and
                                                         ``AWS_ENDPOINT_URL`` for another
                                                         endpoint
``gs://``   google-cloud-storage                         Application Default Credentials, and
                                                         ``STORAGE_EMULATOR_HOST``
``dbfs:/``  databricks-sdk (DBFS API)                    ``DATABRICKS_HOST`` and
                                                         ``DATABRICKS_TOKEN`` (or any of the
                                                         SDK's auth methods)
==========  ===========================================  ====================================

The reconciling sensor reads a job's Pipes messages with ``read_bytes(uri)`` whichever backend
ran it, and ``ml_assets.training.stage`` uploads a job's output with ``upload_dir``. Each SDK is
imported only when its scheme is used.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlparse


class ObjectStore(Protocol):
    def read_bytes(self, uri: str) -> bytes: ...

    def write_bytes(self, uri: str, data: bytes) -> None: ...

    def exists(self, uri: str) -> bool: ...

    def upload(self, path: Path, uri: str) -> None: ...

    def download(self, uri: str, path: Path) -> None: ...


class ObjectNotFound(FileNotFoundError):
    """The URI names nothing in its store."""


def scheme_of(uri: str) -> str:
    """``file`` for local paths and ``file://`` URIs, else the URI's scheme (``s3``, ``gs``...)."""
    if "://" not in uri and not uri.startswith("dbfs:/"):
        return "file"
    return urlparse(uri).scheme or "file"


def is_local(uri: str) -> bool:
    return scheme_of(uri) == "file"


def local_path(uri: str) -> Path:
    """The path of a local URI (a plain path or ``file://``)."""
    if uri.startswith("file://"):
        return Path(unquote(urlparse(uri).path))
    if not is_local(uri):
        raise ValueError(f"{uri!r} is not a local path")
    return Path(uri).expanduser()


def join(uri: str, *parts: str) -> str:
    """``uri`` with ``parts`` appended, one ``/`` between each."""
    out = uri.rstrip("/")
    for part in parts:
        out = f"{out}/{part.strip('/')}"
    return out


def _bucket_and_key(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    if not parsed.netloc:
        raise ValueError(f"{uri!r} names no bucket")
    return parsed.netloc, parsed.path.lstrip("/")


class LocalStore:
    def read_bytes(self, uri: str) -> bytes:
        try:
            return local_path(uri).read_bytes()
        except FileNotFoundError:
            raise ObjectNotFound(uri) from None

    def write_bytes(self, uri: str, data: bytes) -> None:
        path = local_path(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        temporary.write_bytes(data)
        os.replace(temporary, path)

    def exists(self, uri: str) -> bool:
        return local_path(uri).exists()

    def upload(self, path: Path, uri: str) -> None:
        target = local_path(uri)
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.resolve() != target.resolve():
            temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            shutil.copyfile(path, temporary)
            os.replace(temporary, target)

    def download(self, uri: str, path: Path) -> None:
        source = local_path(uri)
        if not source.exists():
            raise ObjectNotFound(uri)
        if source.resolve() != path.resolve():
            shutil.copyfile(source, path)


class _RemoteStore:
    """What remote stores share: a download is one read, written to the local path."""

    def read_bytes(self, uri: str) -> bytes:
        raise NotImplementedError

    def download(self, uri: str, path: Path) -> None:
        path.write_bytes(self.read_bytes(uri))


class S3Store(_RemoteStore):
    """S3 through boto3; the client's own retries (standard mode) absorb throttling and 5xx."""

    def __init__(self) -> None:
        import boto3
        from botocore.config import Config

        self._client = boto3.client(
            "s3", config=Config(retries={"mode": "standard", "max_attempts": 8})
        )

    def read_bytes(self, uri: str) -> bytes:
        bucket, key = _bucket_and_key(uri)
        try:
            body: bytes = self._client.get_object(Bucket=bucket, Key=key)["Body"].read()
        except self._client.exceptions.NoSuchKey:
            raise ObjectNotFound(uri) from None
        return body

    def write_bytes(self, uri: str, data: bytes) -> None:
        bucket, key = _bucket_and_key(uri)
        self._client.put_object(Bucket=bucket, Key=key, Body=data)

    def exists(self, uri: str) -> bool:
        from botocore.exceptions import ClientError

        bucket, key = _bucket_and_key(uri)
        try:
            self._client.head_object(Bucket=bucket, Key=key)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    def upload(self, path: Path, uri: str) -> None:
        bucket, key = _bucket_and_key(uri)
        self._client.upload_file(str(path), bucket, key)


class GcsStore(_RemoteStore):
    """Google Cloud Storage through google-cloud-storage (honours ``STORAGE_EMULATOR_HOST``)."""

    def __init__(self) -> None:
        from google.cloud import storage

        if os.environ.get("STORAGE_EMULATOR_HOST"):
            from google.auth.credentials import AnonymousCredentials

            project = os.environ.get("GOOGLE_CLOUD_PROJECT", "ml-assets-local")
            self._client = storage.Client(project=project, credentials=AnonymousCredentials())
        else:
            self._client = storage.Client()

    def _blob(self, uri: str) -> Any:
        bucket, key = _bucket_and_key(uri)
        return self._client.bucket(bucket).blob(key)

    def read_bytes(self, uri: str) -> bytes:
        from google.api_core.exceptions import NotFound

        try:
            data: bytes = self._blob(uri).download_as_bytes()
        except NotFound:
            raise ObjectNotFound(uri) from None
        return data

    def write_bytes(self, uri: str, data: bytes) -> None:
        self._blob(uri).upload_from_string(data)

    def exists(self, uri: str) -> bool:
        return bool(self._blob(uri).exists())

    def upload(self, path: Path, uri: str) -> None:
        self._blob(uri).upload_from_filename(str(path))


_DBFS_PUT_LIMIT = 1 << 20  # the DBFS API's limit for inline `put` contents


class DbfsStore(_RemoteStore):
    """DBFS through databricks-sdk's DBFS API (``dbfs:/path``)."""

    def __init__(self) -> None:
        from databricks.sdk import WorkspaceClient

        self._client = WorkspaceClient()

    @staticmethod
    def _path(uri: str) -> str:
        return "/" + uri.removeprefix("dbfs:").lstrip("/")

    def read_bytes(self, uri: str) -> bytes:
        from databricks.sdk.errors import NotFound

        try:
            with self._client.dbfs.download(self._path(uri)) as stream:
                data: bytes = stream.read()
        except NotFound:
            raise ObjectNotFound(uri) from None
        return data

    def write_bytes(self, uri: str, data: bytes) -> None:
        import base64
        import io

        if len(data) <= _DBFS_PUT_LIMIT:
            # One call, idempotent under retries (a retried add-block could append twice).
            contents = base64.b64encode(data).decode()
            self._client.dbfs.put(self._path(uri), contents=contents, overwrite=True)
        else:
            self._client.dbfs.upload(self._path(uri), io.BytesIO(data), overwrite=True)

    def exists(self, uri: str) -> bool:
        return bool(self._client.dbfs.exists(self._path(uri)))

    def upload(self, path: Path, uri: str) -> None:
        self.write_bytes(uri, path.read_bytes())


_STORES: dict[str, type] = {"file": LocalStore, "s3": S3Store, "gs": GcsStore, "dbfs": DbfsStore}
_cache: dict[tuple[str, ...], ObjectStore] = {}
# Environment variables that point a store's client elsewhere: a change gives a new client.
_ENDPOINT_VARIABLES = ("AWS_ENDPOINT_URL", "STORAGE_EMULATOR_HOST", "DATABRICKS_HOST")


def store_for(uri: str) -> ObjectStore:
    """The store that serves ``uri``; one client per scheme and process, built on first use."""
    scheme = scheme_of(uri)
    if scheme not in _STORES:
        choices = ", ".join(f"{s}://" for s in _STORES)
        raise ValueError(f"unsupported storage URI {uri!r}; use a local path or one of {choices}")
    # Keyed by pid too: a client built before a fork must not be shared with the child.
    key = (scheme, str(os.getpid()), *(os.environ.get(v, "") for v in _ENDPOINT_VARIABLES))
    if key not in _cache:
        _cache[key] = _STORES[scheme]()
    return _cache[key]


def reset_clients() -> None:
    """Forget the cached clients (e.g. after credentials change in a long-lived process)."""
    _cache.clear()


def read_bytes(uri: str) -> bytes:
    return store_for(uri).read_bytes(uri)


def read_json(uri: str) -> Any:
    return json.loads(read_bytes(uri))


def write_json(uri: str, document: Any) -> None:
    store_for(uri).write_bytes(uri, json.dumps(document, indent=2, sort_keys=True).encode())


def exists(uri: str) -> bool:
    return store_for(uri).exists(uri)


def upload_file(path: Path, uri: str) -> None:
    store_for(uri).upload(path, uri)


def fetch(uri: str, directory: Path | None = None) -> Path:
    """A local path holding the object at ``uri`` (the path itself when ``uri`` is local)."""
    if is_local(uri):
        return local_path(uri)
    directory = directory or Path(tempfile.mkdtemp(prefix="ml_assets_fetch_"))
    target = directory / (urlparse(uri).path.rsplit("/", 1)[-1] or "object")
    store_for(uri).download(uri, target)
    return target


@contextlib.contextmanager
def local_copy(uri: str) -> Iterator[Path]:
    """A local path to read ``uri`` from for the duration of the block (no copy if local)."""
    if is_local(uri):
        yield local_path(uri)
        return
    with tempfile.TemporaryDirectory(prefix="ml_assets_fetch_") as scratch:
        yield fetch(uri, Path(scratch))


def sibling(uri: str, name: str) -> str:
    """The object called ``name`` in the same folder as ``uri``."""
    return join(uri.rstrip("/").rsplit("/", 1)[0], name)


def upload_dir(directory: Path, uri: str, last: Iterable[str] = ()) -> list[str]:
    """Copy every file under ``directory`` to ``uri``; names in ``last`` go after the rest.

    Writing ``messages.jsonl`` last means whatever a message names is already there.
    Returns the URIs written, in order.
    """
    store = store_for(uri)
    late = set(last)
    files = sorted(p for p in directory.rglob("*") if p.is_file())
    ordered = [p for p in files if p.name not in late] + [p for p in files if p.name in late]
    written = []
    for path in ordered:
        target = join(uri, path.relative_to(directory).as_posix())
        store.upload(path, target)
        written.append(target)
    return written
