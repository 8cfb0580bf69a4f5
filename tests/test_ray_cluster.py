"""A real two-node Ray cluster on loopback: `ray start --head` and a second node, each its own process group with
`--num-cpus 1`; `vtc compress --engine ray` as the driver; outputs on the S3 test server, so the nodes share no
folder. The manifest says which node did each video (both did); a node killed mid-run leaves the batch to the
other; every Ray process the test started is gone afterwards.

Every node advertises a loopback address: the head 127.0.0.2, the worker 127.0.0.3, the driver attaches to the head's
(`VTC_RAY_NODE_IP`). Ray 2.60 replaces the literal 127.0.0.1 (and `localhost`) with the host's routable address
when it runs as a cluster, but any other address of 127.0.0.0/8 is taken as given, and Linux routes that whole
block through the loopback interface: no test traffic leaves the host. (Ray's servers listen on every interface;
Ray has no switch for that.) Opt-in (`VTC_RAY_CLUSTER_TEST=1`, 2–4 minutes on a 2-core machine);
`.ci/run` runs it after the README's test command."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vtc.io.storage import RemotePath, set_options
from vtc.run.batch import read_manifest

if os.environ.get("VTC_RAY_CLUSTER_TEST") != "1":
    pytest.skip("two-node Ray cluster (about 2-4 min): opt-in with VTC_RAY_CLUSTER_TEST=1; .ci/run runs it",
                allow_module_level=True)
if sys.platform != "linux":
    pytest.skip("the two-node cluster uses loopback aliases (127.0.0.2, 127.0.0.3): Linux only",
                allow_module_level=True)
pytest.importorskip("ray")
pytest.importorskip("s3fs")
pytest.importorskip("moto")

from tests.s3server import S3Server, child_env, free_port, wait_port  # noqa: E402

RAY = str(Path(sys.executable).with_name("ray"))
HEAD, WORKER = "127.0.0.2", "127.0.0.3"


def _loopback_alias(ip: str) -> bool:
    import socket

    try:
        with socket.socket() as s:
            s.bind((ip, 0))
        return True
    except OSError:
        return False


if not all(map(_loopback_alias, (HEAD, WORKER))):
    pytest.skip(f"{HEAD} and {WORKER} are not addresses of this host's loopback", allow_module_level=True)


class Cluster:
    """A head and a worker node, each `ray start --block` in its own session (killed as a process group)."""

    def __init__(self, env: dict[str, str]) -> None:
        self.temp = tempfile.mkdtemp(prefix="vr")  # short: Ray's socket paths live under it
        self.port = free_port()
        self.env = dict(env, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
        self.head = self._start("--head", "--node-ip-address", HEAD, "--port", str(self.port),
                                "--include-dashboard", "false", "--temp-dir", self.temp)
        self.address = f"{HEAD}:{self.port}"
        wait_port(self.port, 120, HEAD)
        self.worker = self._start("--address", self.address, "--node-ip-address", WORKER)
        self.wait_nodes(2)

    def wait_nodes(self, n: int, timeout: float = 180.0) -> None:
        """Until `ray status` lists n active nodes."""
        t = time.monotonic()
        while True:
            out = subprocess.run([RAY, "status", "--address", self.address], env=self.env, capture_output=True,
                                 text=True, timeout=60).stdout
            active = out.split("Active:", 1)[-1].split("Pending:", 1)[0] if "Active:" in out else ""
            if active.count("node_") >= n:
                return
            if time.monotonic() - t > timeout:
                raise TimeoutError(f"{n} Ray nodes never became active:\n{out[-1500:]}")
            time.sleep(1)

    def _start(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen([RAY, "start", "--block", "--num-cpus", "1", *args],
                                env=self.env, start_new_session=True, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)

    @staticmethod
    def kill(p: subprocess.Popen) -> None:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait()

    def left(self) -> list[tuple[int, str]]:
        out = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout
        return [(int(line.split(None, 1)[0]), line) for line in out.splitlines()
                if self.temp in line and "ps -eo" not in line]

    def stop(self) -> list[str]:
        """Stop both nodes; → what was still running (then killed by pid)."""
        self.kill(self.worker)
        self.kill(self.head)
        time.sleep(1)
        left = self.left()
        for pid, _ in left:
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.temp, ignore_errors=True)
        return [line for _, line in left]


@pytest.fixture()
def s3() -> Iterator[S3Server]:
    with S3Server() as server:
        yield server


def test_two_node_cluster_on_s3(s3: S3Server, clip_path: Path, models, monkeypatch) -> None:  # noqa: ANN001
    for k, v in s3.env.items():
        monkeypatch.setenv(k, v)
    set_options({})
    s3.bucket("ray-in")
    s3.bucket("ray-out")
    for i in range(12):
        s3.put(f"s3://ray-in/v{i}.mp4", clip_path)
    cfg, ckpt = models["clip"]
    cluster = Cluster(child_env(s3))
    try:
        cmd = [sys.executable, "-m", "vtc.cli", "compress", "s3://ray-in/", "-o", "s3://ray-out/t", "--engine", "ray",
               "--ray-address", cluster.address, "--actors", "2", "--method", "pool", "--frames", "4",
               "--model", str(cfg), "--checkpoint", str(ckpt), "--json"]
        env = dict(cluster.env, VTC_RAY_ACTOR_CPUS="1", VTC_RAY_DECODE_CPUS="0", VTC_RAY_NODE_IP=HEAD)
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
        assert done.returncode == 0, done.stderr[-3000:]
        s = json.loads(done.stdout)
        assert (s["ok"], s["failed"]) == (12, 0)
        recs = read_manifest(RemotePath("s3://ray-out/t"))
        nodes = {r.get("node") for k, r in recs.items() if k.startswith("s3://")}
        assert len(nodes) == 2 and all(nodes), nodes
        assert sorted(k for k in s3.keys("ray-out") if k.endswith(".safetensors")) == \
            sorted(f"t/v{i}.safetensors" for i in range(12))

        # the worker node killed once the run is under way: the other node finishes the batch
        for i in range(12, 24):
            s3.put(f"s3://ray-in/v{i}.mp4", clip_path)
        run = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        t = time.monotonic()
        while len([k for k in s3.keys("ray-out") if k.endswith(".safetensors")]) < 14:
            assert run.poll() is None and time.monotonic() - t < 300, "the run ended before the kill"
            time.sleep(0.2)
        cluster.kill(cluster.worker)
        out, err = run.communicate(timeout=400)
        assert run.returncode == 0, err[-3000:]
        s = json.loads(out)
        assert (s["ok"], s["failed"], s["skipped"]) == (12, 0, 12), s  # the head's actor took over the rest
        assert sorted(k for k in s3.keys("ray-out") if k.endswith(".safetensors")) == \
            sorted(f"t/v{i}.safetensors" for i in range(24))
        recs = read_manifest(RemotePath("s3://ray-out/t"))
        assert {r["status"] for k, r in recs.items() if k.startswith("s3://")} == {"ok"}
        assert not [k for k in s3.keys("ray-out") if ".tmp" in k or k.endswith(".part")]

        # resume is clean: nothing left to do, on the one node still up
        cluster.wait_nodes(1)
        rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
        assert rerun.returncode == 0, rerun.stderr[-2000:]
        s = json.loads(rerun.stdout)
        assert (s["ok"], s["failed"], s["skipped"]) == (0, 0, 24), s
    finally:
        left = cluster.stop()
    assert not left, left
