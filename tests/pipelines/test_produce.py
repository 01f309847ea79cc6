"""The encoding pass: an interrupted job resumes, and an encoder actor lost mid-run loses and duplicates nothing."""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from pipelines.curation import LABELS_FILE, SCORED_DIR, SCORED_DONE
from store.reader import committed_sample_ids, read_table

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def curated(curated_corpus):
    """The session's curated corpus (tests/conftest.py): its output folder and the samples that reach stage 1."""
    config, _ = curated_corpus
    output = pathlib.Path(config.output_dir)
    labels = pq.read_table(output / LABELS_FILE).to_pydict()
    expected = {s for s, stage in zip(labels["sample_id"], labels["stage"], strict=True) if stage >= 1}
    return output, expected


def _busy_vae_worker_pids() -> list[int]:
    """VAE encoder actors busy with a batch: Ray titles a worker process after the actor and the call it runs."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                command = open(f"/proc/{entry}/cmdline", "rb").read().decode(errors="replace")
            except OSError:
                continue
            if command.startswith("ray::MapWorker(MapBatches(VaeEncodeStage)).submit"):
                pids.append(int(entry))
    return pids


def test_preprocess_resumes_and_survives_actor_loss(curated, tmp_path):
    """``jobs/preprocess.py`` killed while it encodes (its scoring pass complete: the module's, copied) resumes after
    the scoring pass and completes the store, storing nothing twice; in the resumed run, a VAE encoder actor's
    process is SIGKILLed while it holds a batch: Ray restarts the actor (its constructor arguments are kept in the
    object store) and the batch is encoded again, nothing lost and nothing stored twice."""
    output, expected = curated
    corpus = sorted((output.parent / "corpus").glob("*.tar"))
    shutil.copytree(output, tmp_path / "out")
    args = [
        sys.executable,
        str(ROOT / "jobs" / "preprocess.py"),
        f"output_dir={tmp_path / 'out'}",
        f"sources=[{{kind: webdataset, paths: [{', '.join(str(p) for p in corpus)}]}}]",
        f"encode.store_dir={tmp_path / 'store'}",
        "encode.resolutions=[256]",
        "encode.rows_per_shard=2",
        "encode.vae_pool.batch_size=2",
        "min_rows_per_file=1",
        # The corpus was curated with the tiny captioner and CLIP: the relabelling of the resumed job checks alike.
        "annotation.preset=tiny",
        "clip.clip.model_name=tiny-clip",
    ]
    env = {**os.environ, "RAY_ADDRESS": ray_address()}
    process = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    # Kill the job (as a crash or a lost driver would) once encoding is under way: the scoring pass is complete and
    # an encoder holds a batch. On a corpus this small Ray Data carries the kept rows in one block, so the store
    # would fill in one burst at the end: the kill lands before it, and the second run must redo the encoding only.
    while time.time() < deadline and process.poll() is None and not _busy_vae_worker_pids():
        time.sleep(0.05)
    interrupted = process.poll() is None
    process.kill()
    process.wait(timeout=60)
    partial = committed_sample_ids(tmp_path / "store")
    assert (tmp_path / "out" / SCORED_DIR / SCORED_DONE).is_file(), "killed before the scoring pass completed"
    assert interrupted and partial < expected, "the first run was not interrupted before the store was complete"
    log = tmp_path / "resumed.log"  # a file, not a pipe: nothing reads the job's output while it runs
    resumed = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=log.open("w"))
    killed = None
    while time.time() < deadline + 300 and resumed.poll() is None and killed is None:
        pids = _busy_vae_worker_pids()
        if pids:  # mid-run: the encoder holds a batch, and more batches wait for it
            os.kill(pids[0], signal.SIGKILL)
            killed = pids[0]
        time.sleep(0.05)
    assert resumed.wait(timeout=600) == 0, log.read_text()[-2000:]
    assert killed is not None, "the resumed run ended before an encoder actor could be killed"
    assert not pathlib.Path(f"/proc/{killed}").exists()  # that actor's process is gone
    stored = read_table(tmp_path / "store", 256).column("sample_id").to_pylist()
    assert len(stored) == len(set(stored)), "a sample was stored twice"
    assert set(stored) == expected  # none lost


def ray_address() -> str:
    import ray

    return ray.get_runtime_context().gcs_address


def test_a_pair_delivered_twice_is_stored_once(tmp_path):
    """Rows sharing a ``sample_id`` are one pair delivered twice: the labels keep its best stage and the encoder's
    filter passes its first copy only (a crawl's exact re-posts once reached the store twice)."""
    import numpy as np
    import pyarrow as pa

    from pipelines.produce import KeepSamples, kept_samples
    from store import columns as C

    labels = tmp_path / "labels.parquet"
    pq.write_table(
        pa.table({C.SAMPLE_ID: ["a", "b", "a", "c", "c"], "stage": pa.array([5, 2, 0, 0, 1], pa.int8())}), labels
    )
    keep = kept_samples(labels, min_stage=1)
    assert keep == {"a": 5, "b": 2, "c": 1}
    stage = KeepSamples(keep)
    first = stage({C.SAMPLE_ID: np.array(["a", "a", "x", "b"], dtype=object), "n": np.arange(4)})
    second = stage({C.SAMPLE_ID: np.array(["b", "c", "a"], dtype=object), "n": np.arange(4, 7)})
    assert first["n"].tolist() == [0, 3] and first["stage"].tolist() == [5, 2]
    assert second["n"].tolist() == [5] and second["stage"].tolist() == [1]
