"""`embed --engine ray --address HOST:PORT` against a cluster started apart with `ray start --head` on
127.0.0.1, as on a real cluster: the command connects, embeds, and the cluster is stopped at the end."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

pytest.importorskip("ray")

from dinov3kit.tools.store import read_meta, shard_files  # noqa: E402
from oracles.hf_twin import save_hf_vit  # noqa: E402

PHOTOS = Path(__file__).resolve().parents[1] / "examples" / "photos"
RAY = Path(sys.executable).with_name("ray")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """A one-node cluster (2 CPUs) run by `ray start --head --block`, stopped by signalling that process
    (so that only this cluster is stopped, not other Ray instances of the machine)."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "RAY_BACKEND_LOG_LEVEL": "error", "RAY_AUTH_MODE": "disabled"}
    command = [str(RAY), "start", "--head", "--block", f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=2",
               "--include-dashboard=false", f"--temp-dir={tmp_path_factory.mktemp('ray')}", "--object-store-memory=200000000"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.5)
    assert process.poll() is None, process.stdout.read().decode()
    yield address, env
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)


@pytest.mark.slow
def test_embed_on_a_cluster_reached_by_address(head, tmp_path):
    address, env = head
    _, model = save_hf_vit(tmp_path / "hf", seed=5, num_register_tokens=4)
    images = tmp_path / "images"
    shutil.copytree(PHOTOS, images, ignore=shutil.ignore_patterns("*.py", "*.md"))
    (images / "broken.jpg").write_bytes(b"nope")
    command = [sys.executable, "-m", "dinov3kit.cli", "embed", str(images), "-o", str(tmp_path / "out"), "--engine", "ray",
               "--address", address, "--model", str(model), "--resolution", "160", "--device", "cpu", "--workers", "1,2", "-q"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr
    assert "embedded 6 of 7 images, 1 failed" in result.stdout
    assert "broken.jpg" in result.stdout
    assert "Ray" not in result.stderr and "INFO" not in result.stderr, result.stderr
    paths = [p for file in shard_files(tmp_path / "out") for p in pq.read_table(file).column("path").to_pylist()]
    assert sorted(paths) == sorted(str(p) for p in images.glob("*.jpg") if p.name != "broken.jpg")
    assert read_meta(tmp_path / "out")["errors"][0]["path"].endswith("broken.jpg")
