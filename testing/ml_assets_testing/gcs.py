"""gcp-storage-emulator on loopback, with GCS's request preconditions on every object operation.

The emulator (2026.7.19) ignores ``ifGenerationMatch`` and its kin everywhere. ``GcsEmulator``
wraps its request handler and storage so that, as the JSON API reference documents for
``objects.get``, ``insert``, ``patch``, ``delete``, ``copy``, ``rewrite`` and ``compose``:

* ``ifGenerationMatch`` / ``ifGenerationNotMatch`` / ``ifMetagenerationMatch`` /
  ``ifMetagenerationNotMatch`` condition the operation on the live object's generation or
  metageneration (``ifGenerationMatch=0``: only if no live object exists;
  ``ifGenerationNotMatch=0``: only if one does; a metageneration condition, or a generation
  non-match, fails when no live object exists);
* on a copy or rewrite the ``ifSource*`` forms condition the source object, the plain forms the
  destination;
* the XML API's ``x-goog-if-generation-match`` and ``x-goog-if-metageneration-match`` headers
  count as the first and third;
* a failed condition is ``412 Precondition Failed`` (``conditionNotMet``), except a
  ``*NotMatch`` condition on a read (object metadata or media), which is ``304 Not Modified``;
  a value that is not an integer is ``400``;
* an operation on a missing object answers ``404`` as before.

Batch requests and compose's per-source ``objectPreconditions`` are passed through unchecked.
Requests are served one at a time (the emulator's storage is not thread-safe), so a condition
and the operation it guards are atomic.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from dataclasses import dataclass
from functools import partial
from http.server import ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

from gcp_storage_emulator.handlers import buckets, objects
from gcp_storage_emulator.server import HANDLERS, RequestHandler, Router
from gcp_storage_emulator.storage import Storage


class _ConditionFailed(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def _integer(raw: str | None, name: str) -> int | None:
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"Invalid argument: {name}={raw!r} is not an integer") from None


@dataclass(frozen=True)
class Conditions:
    """One request's preconditions on one object (``None``: not given)."""

    generation_match: int | None = None
    generation_not_match: int | None = None
    metageneration_match: int | None = None
    metageneration_not_match: int | None = None

    @classmethod
    def parse(cls, query: dict[str, list[str]], headers: Any, prefix: str = "if") -> Conditions:
        def value(name: str, header: str | None = None) -> int | None:
            raw = query.get(f"{prefix}{name}", [None])[0]
            if raw is None and header is not None:
                raw = headers.get(header)
            return _integer(raw, f"{prefix}{name}")

        xml = prefix == "if"
        return cls(
            generation_match=value(
                "GenerationMatch", "x-goog-if-generation-match" if xml else None
            ),
            generation_not_match=value("GenerationNotMatch"),
            metageneration_match=value(
                "MetagenerationMatch", "x-goog-if-metageneration-match" if xml else None
            ),
            metageneration_not_match=value("MetagenerationNotMatch"),
        )

    @property
    def given(self) -> bool:
        return any(
            v is not None
            for v in (
                self.generation_match,
                self.generation_not_match,
                self.metageneration_match,
                self.metageneration_not_match,
            )
        )

    def check(self, live: dict[str, Any] | None, *, read: bool = False) -> None:
        """Raise ``_ConditionFailed`` unless the live object (``None``: absent) satisfies these
        conditions; ``read`` makes a failed non-match a 304 rather than a 412."""
        generation = int(live["generation"]) if live is not None else 0
        metageneration = int(live["metageneration"]) if live is not None else None
        not_modified = 304 if read else 412
        if self.generation_match is not None and generation != self.generation_match:
            raise _ConditionFailed(412)
        if self.generation_not_match is not None and (
            live is None or generation == self.generation_not_match
        ):
            raise _ConditionFailed(not_modified if live is not None else 412)
        if self.metageneration_match is not None and metageneration != self.metageneration_match:
            raise _ConditionFailed(412)
        if self.metageneration_not_match is not None and (
            metageneration is None or metageneration == self.metageneration_not_match
        ):
            raise _ConditionFailed(not_modified if metageneration is not None else 412)


class _ConditionalStorage(Storage):  # type: ignore[misc]
    """The emulator's in-memory storage; object writes honour the request's conditions."""

    def __init__(self) -> None:
        super().__init__(use_memory_fs=True)
        self.lock = threading.Lock()
        self.write_conditions: Conditions | None = None

    def live(self, bucket_name: str, name: str) -> dict[str, Any] | None:
        found: dict[str, Any] | None = self.objects.get(bucket_name, {}).get(name)
        return found

    def create_file(
        self,
        bucket_name: str,
        file_name: str,
        content: bytes,
        file_obj: dict[str, Any],
        file_id: str | None = None,
    ) -> None:
        if self.write_conditions is not None:
            self.write_conditions.check(self.live(bucket_name, file_name))
        super().create_file(bucket_name, file_name, content, file_obj, file_id)

    def _write_config_to_file(self) -> None:
        """Nothing to persist in memory; the emulator would re-serialise every object here."""


_ROUTES = [(re.compile(regex), handlers) for regex, handlers in HANDLERS]
_READS = (objects.get, objects.download)
_ON_EXISTING = (objects.get, objects.download, objects.delete, objects.patch)
_COPIES = (objects.copy, objects.rewrite)
_WRITES = (objects.insert, objects.upload_partial, objects.xml_upload, objects.compose)


def _route(path: str, method: str) -> tuple[Any, dict[str, str]] | None:
    for regex, handlers in _ROUTES:
        match = regex.fullmatch(path)
        if match:
            handler = handlers.get(method)
            if handler is None and method == "POST" and path.endswith("/o"):
                handler = objects.insert  # the emulator routes uploads without /upload so
            params = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
            return handler, params
    return None


def _error_body(status: int, message: str, reason: str) -> bytes:
    error = {"code": status, "message": message, "errors": [{"reason": reason, "domain": "global"}]}
    return json.dumps({"error": error}).encode()


class _GcsHandler(RequestHandler):  # type: ignore[misc]
    """One request at a time, each checked against its preconditions before the emulator runs."""

    storage: _ConditionalStorage

    def _serve(self, method: str) -> None:
        override = self.headers.get("x-http-method-override")
        method = override or method
        parsed = urlparse(self.path)
        query = parse_qs(parsed.query)
        with self.storage.lock:
            try:
                self._check(method, parsed.path, query)
                Router(self).handle(method)
            except ValueError as error:
                self._answer(400, _error_body(400, str(error), "invalid"))
            except _ConditionFailed as failed:
                if failed.status == 304:
                    self._answer(304, b"")
                else:
                    message = "At least one of the pre-conditions you specified did not hold."
                    self._answer(412, _error_body(412, message, "conditionNotMet"))
            finally:
                self.storage.write_conditions = None

    def _check(self, method: str, path: str, query: dict[str, list[str]]) -> None:
        target = Conditions.parse(query, self.headers)
        source = Conditions.parse(query, self.headers, prefix="ifSource")
        routed = _route(path, method)
        if routed is None:
            return
        handler, params = routed
        if handler in _ON_EXISTING and target.given:
            live = self.storage.live(params["bucket_name"], params["object_id"])
            if live is not None:
                target.check(live, read=handler in _READS)
        elif handler in _COPIES:
            if source.given:
                live = self.storage.live(params["bucket_name"], params["object_id"])
                if live is not None:
                    source.check(live)
            self.storage.write_conditions = target if target.given else None
        elif handler in _WRITES and target.given:
            self.storage.write_conditions = target

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        if body:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_PATCH(self) -> None:
        self._serve("PATCH")

    def do_DELETE(self) -> None:
        self._serve("DELETE")


class GcsEmulator:
    """gcp-storage-emulator in memory on 127.0.0.1 (a free port), with ``buckets`` created.

    Point google-cloud-storage at it with ``env`` (``STORAGE_EMULATOR_HOST``).
    """

    def __init__(self, bucket_names: list[str] | tuple[str, ...] = ()) -> None:
        self.bucket_names = list(bucket_names)
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "emulator not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def env(self) -> dict[str, str]:
        return {"STORAGE_EMULATOR_HOST": self.url}

    def start(self) -> GcsEmulator:
        # The emulator logs each missing object at ERROR; to a submit claim a 404 is an answer.
        logging.getLogger("gcp_storage_emulator").setLevel(logging.CRITICAL)
        storage = _ConditionalStorage()
        for name in self.bucket_names:
            buckets.create_bucket(name, storage)
        server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_GcsHandler, storage))
        server.daemon_threads = True
        self._server = server
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def client(self) -> Any:
        """A google-cloud-storage client of this emulator, whatever the environment says."""
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        return storage.Client(
            project="ml-assets-test",
            credentials=AnonymousCredentials(),
            client_options={"api_endpoint": self.url},
        )

    def __enter__(self) -> GcsEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
