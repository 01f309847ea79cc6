"""`ray job submit` of jobs/pretrain.py to a running Ray head (the test session's), as an operator submits it."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = pathlib.Path(sys.executable).parent


def test_ray_job_submit(ray_job_address, tiny_store, tmp_path):
    """``ray job submit`` of the pretraining job to the session's Ray (its head runs the job agent), as an operator
    submits to a cluster; token authentication is on (Ray's default), so the client sets ``RAY_AUTH_MODE=token``."""
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    env.pop("RAY_ADDRESS", None)
    address = ray_job_address
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
    # A fresh head answers "No available agent to submit job" until its job agent registers: seconds when the
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
    assert list(checkpoint.glob("ray/*/checkpoint_*/dcp/*.distcp"))  # the training checkpoints (DCP shards)
    assert list(checkpoint.glob("exports/*/transformer/*.safetensors"))  # and the phases' exports
    assert (checkpoint / "summary.json").is_file()
