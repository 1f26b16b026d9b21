"""A real S3-compatible server on 127.0.0.1 for the tests and the store benchmark: moto's server
mode (``moto[server]``, a dev dependency), started in a thread on a free port. Nothing is
downloaded; the AWS_* variables point boto/s3fs at it for as long as it runs."""

from __future__ import annotations

import logging
import os
import socket
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

BUCKET = "lohp-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clear_s3fs_cache() -> None:
    """Forget s3fs' filesystem instances (they keep the credentials and endpoint they were made
    with, and a listing cache)."""
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()


@contextmanager
def local_s3(bucket: str = BUCKET) -> Iterator[str]:
    """A moto S3 server with an empty ``bucket``; yields its endpoint URL. The environment's
    AWS_* variables are set to it (fake credentials) and restored afterwards."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ACCESS_KEY_ID": "lohp-test",
        "AWS_SECRET_ACCESS_KEY": "lohp-test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_EC2_METADATA_DISABLED": "true",  # never ask a cloud metadata service
    }
    before = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    clear_s3fs_cache()
    try:
        import s3fs

        s3fs.S3FileSystem().mkdir(bucket)
        yield endpoint
    finally:
        clear_s3fs_cache()
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


@contextmanager
def counted_s3_calls() -> Iterator[Counter]:
    """Counts the S3 API requests s3fs makes while open, by operation (get_object, …)."""
    import s3fs.core

    calls: Counter = Counter()
    real = s3fs.core.S3FileSystem._call_s3

    async def counted(self: Any, method: str, *args: Any, **kwargs: Any) -> Any:
        calls[method] += 1
        return await real(self, method, *args, **kwargs)

    s3fs.core.S3FileSystem._call_s3 = counted
    try:
        yield calls
    finally:
        s3fs.core.S3FileSystem._call_s3 = real
