"""An S3-compatible server (moto) on 127.0.0.1 for one test, with the AWS_* variables pointing at it."""
from __future__ import annotations

import os
import uuid
from contextlib import contextmanager

AWS_VARS = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")


@contextmanager
def s3_bucket():
    """Start the server, create a bucket, yield ``s3://<bucket>``; stop the server after."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    saved = {k: os.environ.get(k) for k in AWS_VARS}
    try:
        host, port = server.get_host_and_port()
        os.environ.update(AWS_ENDPOINT_URL=f"http://{host}:{port}", AWS_ACCESS_KEY_ID="test",
                          AWS_SECRET_ACCESS_KEY="test", AWS_DEFAULT_REGION="us-east-1")
        import boto3
        import fsspec

        fsspec.filesystem("s3").clear_instance_cache()  # s3fs caches clients per endpoint
        bucket = f"srgnn-{uuid.uuid4().hex[:8]}"
        boto3.client("s3").create_bucket(Bucket=bucket)
        yield f"s3://{bucket}"
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        from s3fs import S3FileSystem

        S3FileSystem.clear_instance_cache()  # no cached client keeps pointing at the stopped server
