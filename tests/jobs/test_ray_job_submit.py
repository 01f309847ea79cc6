"""`ray job submit` of jobs/pretrain.py against a real `ray start --head` cluster, stopped afterwards."""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from ..conftest import kept_ray_address_file

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = pathlib.Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def head_node(tmp_path):
    """A head node in its own session and temp dir, on free ports; token authentication stays on."""
    with kept_ray_address_file():  # `ray start` names itself the latest cluster; it is gone after the test
        yield from _head_node(tmp_path)


def _head_node(tmp_path):
    gcs, dashboard = _free_port(), _free_port()
    workers = min(_free_port(), 64000)  # a worker port range of its own, apart from any other Ray on this machine
    temp_dir = pathlib.Path("/tmp") / f"rayjob{os.getpid()}"  # Ray's socket paths must stay short
    # The job runs `python` from the PATH of the cluster: the venv it was installed into, as in an image.
    env = {**os.environ, "RAY_AUTH_MODE": "token", "PATH": f"{BIN}:{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    head = subprocess.Popen(
        [
            str(BIN / "ray"),
            "start",
            "--head",
            "--block",
            f"--port={gcs}",
            f"--dashboard-port={dashboard}",
            "--dashboard-host=127.0.0.1",
            "--num-cpus=8",
            f"--temp-dir={temp_dir}",
            "--include-dashboard=true",
            f"--ray-client-server-port={_free_port()}",
            # The agents' fixed default ports (52365, ...) are taken when another Ray runs here, such as the test
            # session's: the head would start, but its job agent could not serve ("No available agent").
            f"--dashboard-agent-listen-port={_free_port()}",
            f"--dashboard-agent-grpc-port={_free_port()}",
            f"--runtime-env-agent-port={_free_port()}",
            f"--metrics-export-port={_free_port()}",
            f"--min-worker-port={workers}",
            f"--max-worker-port={workers + 300}",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        text=True,
    )
    address = f"http://127.0.0.1:{dashboard}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", dashboard), timeout=1):
                break
        except OSError:
            if head.poll() is not None:
                pytest.fail(f"ray start failed: {head.stdout.read()[-2000:]}")
            time.sleep(0.5)
    # The dashboard port opens before its job agent is ready ("No available agent to submit job"): wait for it.
    while time.time() < deadline:
        listed = subprocess.run(
            [str(BIN / "ray"), "job", "list", f"--address={address}"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if listed.returncode == 0:
            break
        time.sleep(1)
    yield address, env
    # The test is over: a short grace for a clean stop, then every process of the head's session goes at once.
    os.killpg(head.pid, signal.SIGTERM)
    try:
        head.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(head.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    head.wait(timeout=30)
    shutil.rmtree(temp_dir, ignore_errors=True)


def test_ray_job_submit(head_node, tiny_store, tmp_path):
    address, env = head_node
    output = tmp_path / "pretrain"
    command = [
        str(BIN / "ray"),
        "job",
        "submit",
        f"--address={address}",
        f"--working-dir={ROOT}",
        "--",
        "python",
        "jobs/pretrain.py",
        "--config",
        "configs/pretrain_tiny.yaml",
        "--max-steps",
        "3",
        f"store_dir={tiny_store}",
        f"output_dir={output}",
        "samples.prompts=[]",  # no sample grid: this is about submitting the job
    ]
    # A fresh head can answer "No available agent to submit job" until its job agent registers: seconds when the
    # machine is idle, over a minute on 2 loaded cores.
    deadline = time.time() + 240
    while True:
        finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        if "No available agent" not in finished.stdout + finished.stderr or time.time() > deadline:
            break
        time.sleep(3)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    assert "[pretrain] done" in finished.stdout
    checkpoint = output / "tiny"
    assert list(checkpoint.glob("ray/*/checkpoint_*/model/transformer/*.safetensors"))
    assert (checkpoint / "summary.json").is_file()
