"""A real S3 API server for the tests: moto's server mode on 127.0.0.1, behind a TCP relay that can drop every
connection and refuse new ones for a while (a network outage, then the server back), without losing the bucket's
contents (moto keeps them in memory)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port: int, timeout: float = 30.0, host: str = "127.0.0.1") -> None:
    t = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((host, port), 0.2).close()
            return
        except OSError:
            if time.monotonic() > t:
                raise TimeoutError(f"nothing listens on {host}:{port}") from None
            time.sleep(0.05)


class Relay:
    """127.0.0.1:port → 127.0.0.1:target, byte for byte.  `cut_after(n, down)`: once n more bytes went from the
    server to clients, every connection is closed and the port refuses connections for `down` seconds."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = free_port()
        self.conns: set[socket.socket] = set()
        self.lock = threading.Lock()
        self.listener: socket.socket | None = None
        self.budget: int | None = None
        self.down = 0.0
        self.cuts = 0
        self.up()

    def up(self) -> None:
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", self.port))
        ls.listen(64)
        self.listener = ls
        threading.Thread(target=self._accept, args=(ls,), daemon=True).start()

    def cut(self) -> None:
        """Close the listener and every live connection (as a server that stops)."""
        with self.lock:
            ls, self.listener = self.listener, None
            conns, self.conns = list(self.conns), set()
        if ls is not None:
            ls.close()
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()

    def cut_after(self, nbytes: int, down: float) -> None:
        with self.lock:
            self.budget, self.down = nbytes, down

    def _accept(self, ls: socket.socket) -> None:
        while True:
            try:
                client, _ = ls.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                client.close()
                continue
            with self.lock:
                self.conns.update((client, server))
            threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, downstream: bool) -> None:
        try:
            while data := src.recv(65536):
                trip = False
                if downstream:
                    with self.lock:
                        if self.budget is not None:
                            self.budget -= len(data)
                            if self.budget <= 0:
                                self.budget, trip = None, True
                                data = data[: max(0, len(data) // 2)]  # half of this chunk, then the line goes dead
                if data:
                    dst.sendall(data)
                if trip:
                    self.cuts += 1
                    self.cut()
                    threading.Timer(self.down, self.up).start()
                    return
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.close()
                except OSError:
                    pass


class S3Server:
    """`python -m moto.server` on 127.0.0.1 and a `Relay` in front; `env` points boto/s3fs at the relay."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)
        self.relay = Relay(self.port)
        self.endpoint = f"http://127.0.0.1:{self.relay.port}"
        self.env = {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": "testing",
                    "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                    "AWS_EC2_METADATA_DISABLED": "true"}

    def client(self):  # noqa: ANN201
        import boto3

        return boto3.client("s3", endpoint_url=f"http://127.0.0.1:{self.port}", aws_access_key_id="testing",
                            aws_secret_access_key="testing", region_name="us-east-1")

    def bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def put(self, url: str, data: bytes | Path) -> None:
        bucket, _, key = url.removeprefix("s3://").partition("/")
        body = data.read_bytes() if isinstance(data, Path) else data
        self.client().put_object(Bucket=bucket, Key=key, Body=body)

    def get(self, url: str) -> bytes:
        bucket, _, key = url.removeprefix("s3://").partition("/")
        return self.client().get_object(Bucket=bucket, Key=key)["Body"].read()

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sorted(o["Key"] for p in pages for o in p.get("Contents", []))

    def __enter__(self) -> S3Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self.relay.cut()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def child_env(server: S3Server, **extra: str) -> dict[str, str]:
    """The environment of a vtc subprocess that talks to `server`."""
    env = dict(os.environ, **server.env, **extra)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    return env
