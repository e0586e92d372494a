"""A real S3-compatible server on loopback for tests: moto's server mode (`moto_server`),
the way s3fs's own suite tests against S3. `S3Server.env(bucket)` is the environment a
Stagecraft process needs to keep its artifacts there."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class S3Server:
    def __init__(self, log: Path, auth_after: int | None = None):
        """`auth_after`: moto checks credentials (IAM) once that many requests have been
        served without; None: it never checks (any key works)."""
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        moto = Path(sys.executable).with_name("moto_server")
        with log.open("wb") as out:
            env = dict(os.environ)
            if auth_after is not None:
                env["INITIAL_NO_AUTH_ACTION_COUNT"] = str(auth_after)
            self.proc = subprocess.Popen(
                [str(moto), "-H", "127.0.0.1", "-p", str(self.port)], stdout=out, stderr=subprocess.STDOUT, env=env
            )
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(self.endpoint + "/moto-api/", timeout=1.0)
                return
            except httpx.HTTPError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise RuntimeError(f"moto_server did not start: {log.read_text()[-2000:]}") from None
                time.sleep(0.2)

    def env(self) -> dict[str, str]:
        return {**CREDENTIALS, "AWS_ENDPOINT_URL": self.endpoint}

    def make_bucket(self, name: str) -> None:
        """Create the bucket through the S3 API itself (a PUT on the bucket)."""
        import boto3

        boto3.client("s3", endpoint_url=self.endpoint, **boto_credentials()).create_bucket(Bucket=name)

    def client(self):  # type: ignore[no-untyped-def]
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, **boto_credentials())

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def boto_credentials() -> dict[str, str]:
    return {
        "aws_access_key_id": CREDENTIALS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        "region_name": CREDENTIALS["AWS_DEFAULT_REGION"],
    }


def use(server: S3Server) -> None:
    """Point this process's AWS_* at the server (tests restore os.environ with monkeypatch)."""
    os.environ.update(server.env())
