"""moto's server mode on loopback: S3, SageMaker and the rest of AWS for boto3, with no cloud.

The server runs in a thread of this process (``ThreadedMotoServer``) on 127.0.0.1 and a free
port. moto keeps its state per process, not per server: two servers in one process see the same
buckets and resources, and ``mock_aws`` elsewhere in the process resets them. Callers that share
a server across tests should therefore use fresh resource names and re-create the buckets they
need (``create_buckets`` accepts buckets that already exist).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import boto3
from moto.server import ThreadedMotoServer

REGION = "us-east-1"
# What boto3 needs to sign requests to moto; moto accepts any values. Set them in the environment
# (e.g. with ``monkeypatch.setenv``) for code that uses the default credential chain.
TEST_ENVIRONMENT = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": REGION,
}


@contextlib.contextmanager
def moto_server(buckets: Iterable[str] = (), region_name: str = REGION) -> Iterator[str]:
    """Start a moto server on 127.0.0.1 (port 0), create ``buckets``; yields its URL."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        url = f"http://{host}:{port}"
        create_buckets(url, buckets, region_name)
        yield url
    finally:
        server.stop()


def create_buckets(endpoint_url: str, buckets: Iterable[str], region_name: str = REGION) -> None:
    """Create each bucket on the moto server at ``endpoint_url`` unless it is already there."""
    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=region_name,
        aws_access_key_id=TEST_ENVIRONMENT["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=TEST_ENVIRONMENT["AWS_SECRET_ACCESS_KEY"],
    )
    # us-east-1 is the one region that takes no location constraint.
    where = (
        {}
        if region_name == "us-east-1"
        else {"CreateBucketConfiguration": {"LocationConstraint": region_name}}
    )
    for bucket in buckets:
        with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
            s3.create_bucket(Bucket=bucket, **where)
