"""`ray job submit` of jobs/pretrain.py to a running Ray head (the test session's), as an operator submits it."""

from __future__ import annotations

from ..conftest import SHARED_RUN


def test_ray_job_submit(submitted_ddp_run):
    """The session's submitted run (tests/conftest.py: two DDP workers, 20 steps) ran to the end as a Ray job and
    wrote what a run writes: the training checkpoints, the phase's export and the summary."""
    finished, run = submitted_ddp_run
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    assert "[pretrain] done" in finished.stdout
    assert run.name == SHARED_RUN
    assert list(run.glob("ray/*/checkpoint_*/dcp/*.distcp"))  # the training checkpoints (DCP shards)
    assert list(run.glob("exports/*/transformer/*.safetensors"))  # and the phase's export
    assert (run / "summary.json").is_file()
