"""An S3-compatible server for the store tests: moto in server mode (its own HTTP server on a
free port, not an in-process mock) with one bucket, ``hetdiff-runs``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from cluster_runs import free_port

BUCKET = "hetdiff-runs"


@contextlib.contextmanager
def moto_server() -> Iterator[dict]:
    """Start the server and create the bucket; yield ``{"options": s3fs storage options,
    "env": the AWS_* variables that point s3fs in a subprocess at it}``. Stopped on exit."""
    pytest.importorskip("s3fs", reason="`make test-daemons-install` installs s3fs")
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        options = {
            "key": "testing", "secret": "testing", "skip_instance_cache": True,
            "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"},
        }  # fmt: skip
        boto3.client(
            "s3", aws_access_key_id="testing", aws_secret_access_key="testing",
            **options["client_kwargs"],
        ).create_bucket(Bucket=BUCKET)  # fmt: skip
        env = {
            "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_ENDPOINT_URL": endpoint, "AWS_DEFAULT_REGION": "us-east-1",
        }  # fmt: skip
        yield {"options": options, "env": env}
    finally:
        server.stop()
