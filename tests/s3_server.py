"""An S3-compatible server (moto) on a free loopback port, run in a thread of the test process."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import msgspec

ACCESS_KEY_ID = "test-access-key"
SECRET_ACCESS_KEY = "test-secret-key"
# The buckets the tests create and name (s3.allowed_buckets); anything else is refused.
ALLOWED_BUCKETS = ["bucket-*", "e2e-*", "my-bucket"]


class LocalS3(msgspec.Struct):
    endpoint_url: str

    def client(self, region: str = "us-east-1") -> Any:
        import boto3
        from botocore.config import Config

        return boto3.session.Session(aws_access_key_id=ACCESS_KEY_ID, aws_secret_access_key=SECRET_ACCESS_KEY).client(
            "s3",
            region_name=region,
            endpoint_url=self.endpoint_url,
            config=Config(s3={"addressing_style": "path"}, connect_timeout=5, read_timeout=10),
        )

    def create_bucket(self, name: str, region: str = "us-east-1") -> None:
        options = {} if region == "us-east-1" else {"CreateBucketConfiguration": {"LocationConstraint": region}}
        self.client(region).create_bucket(Bucket=name, **options)

    def settings(self) -> dict[str, Any]:
        """omniserve's [s3] settings for this server."""
        return {
            "endpoint_url": self.endpoint_url,
            "access_key_id": ACCESS_KEY_ID,
            "secret_access_key": SECRET_ACCESS_KEY,
            "addressing_style": "path",
            "allowed_buckets": ALLOWED_BUCKETS,
        }


@contextmanager
def local_s3() -> Iterator[LocalS3]:
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    # Bound before the thread starts (port 0: the OS picks a free one), so there is nothing
    # to wait for: a failure to bind raises here.
    server = make_server(
        "127.0.0.1",
        0,
        DomainDispatcherApplication(create_backend_app),
        threaded=True,
        request_handler=MotoRequestHandler,
    )
    thread = threading.Thread(target=server.serve_forever, name="local-s3", daemon=True)
    thread.start()
    try:
        yield LocalS3(endpoint_url=f"http://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
        thread.join(timeout=10)
