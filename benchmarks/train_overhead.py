"""Consumer overhead: samples/s of a Ray Train worker streaming the latent store vs a plain PyTorch loop over the
same tensors already in memory, same model, batch and steps.

    python benchmarks/train_overhead.py [--steps 60] [--rounds 2]

The model is the published MMDiT class at a small width, sized so that one step takes about 50-200 ms on one
thread; both sides pin the step to one thread (``torch.set_num_threads(1)``) so that the data path has the other
core, as data loading has its own CPUs on a real node. The Ray side runs ``training.data.StoreStream`` (the reader
the pretraining loop uses) inside a ``TorchTrainer`` worker; its time is measured in the worker from the first to
the last step, so Ray's start-up is not counted. Also reported: the fraction of step time spent waiting for data and
the data path's CPU time per sample (the prefetch thread's CPU, from the worker's process CPU time minus the time
spent in steps). Last line: one JSON object with ``ray_sps``, ``plain_sps``, ``ratio``, ``data_wait_fraction``,
``data_cpu_ms_per_sample``. Targets: ratio >= 0.9, data_wait_fraction <= 0.05.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import torch  # noqa: E402

from store import columns as C  # noqa: E402
from store.writer import commit_table  # noqa: E402

MODEL = {
    "patch_size": 2,
    "in_channels": 64,
    "out_channels": 16,
    "num_layers": 4,
    "attention_head_dim": 32,
    "num_attention_heads": 4,
    "joint_attention_dim": 64,
    "axes_dims_rope": (8, 12, 12),
}
BATCH, LATENT, TEXT_DIM = 8, 32, 64


def make_store(folder: pathlib.Path, num_samples: int) -> None:
    rng = np.random.default_rng(0)
    rows = {
        name: []
        for name in (
            C.SAMPLE_ID,
            C.BUCKET,
            C.CAPTION,
            C.STAGE,
            C.TEXT_EMBEDS,
            C.TEXT_LEN,
            C.TEXT_DIM,
            C.latents_column(256),
            C.height_column(256),
            C.width_column(256),
        )
    }
    for index in range(num_samples):
        length = int(rng.integers(20, 60))
        rows[C.SAMPLE_ID].append(f"{index:06d}")
        rows[C.BUCKET].append("1x1")
        rows[C.CAPTION].append("x")
        rows[C.STAGE].append(7)
        rows[C.TEXT_EMBEDS].append(C.tensor_bytes(rng.standard_normal((length, TEXT_DIM)).astype(np.float16)))
        rows[C.TEXT_LEN].append(length)
        rows[C.TEXT_DIM].append(TEXT_DIM)
        rows[C.latents_column(256)].append(C.tensor_bytes(rng.standard_normal((16, LATENT, LATENT)).astype(np.float16)))
        rows[C.height_column(256)].append(256)
        rows[C.width_column(256)].append(256)
    fields = {f.name: f for f in C.base_fields() + C.resolution_fields((256,))}
    table = pa.table({name: pa.array(values, fields[name].type) for name, values in rows.items()})
    for start in range(0, num_samples, 500):
        commit_table(folder, table.slice(start, 500))


def build_model():
    from diffusers import QwenImageTransformer2DModel

    torch.manual_seed(0)
    model = QwenImageTransformer2DModel(**MODEL)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-4)


def step(model, optimizer, batch: dict, seed: int) -> None:
    from models.flow_matching import flow_matching_loss
    from models.prompt_embeds import PromptEmbeds

    prompt = PromptEmbeds(batch[C.TEXT_EMBEDS].float(), batch[C.TEXT_MASK])
    out = flow_matching_loss(model, batch[C.LATENTS].float(), prompt, generator=torch.Generator().manual_seed(seed))
    optimizer.zero_grad()
    out.loss.backward()
    optimizer.step()


def run_steps(batches, num_steps: int) -> dict:
    """Train ``num_steps`` steps from an iterator; returns wall time, time waiting for data, step CPU time."""
    torch.set_num_threads(1)
    model, optimizer = build_model()
    iterator = iter(batches)
    step(model, optimizer, next(iterator), 0)  # warm-up: lazy inits, rope caches
    wait = busy = 0.0
    cpu_start, started = time.process_time(), time.perf_counter()
    for index in range(num_steps):
        waited = time.perf_counter()
        batch = next(iterator)
        began = time.perf_counter()
        wait += began - waited
        step(model, optimizer, batch, index + 1)
        busy += time.perf_counter() - began
    wall = time.perf_counter() - started
    return {"wall": wall, "wait": wait, "busy": busy, "cpu": time.process_time() - cpu_start}


def ray_worker(loop_config: dict) -> None:
    import ray.train

    from training.config import PhaseConfig
    from training.data import StoreStream

    phase = PhaseConfig(name="bench", num_steps=1, resolution=256, min_stage=0)
    stream = StoreStream(loop_config["store"], phase, seed=0, rank=0, world=1, batch_size=BATCH, shuffle_buffer=64)

    def batches():
        epoch = 0
        while True:
            yield from stream.batches(epoch)
            epoch += 1

    timings = run_steps(batches(), loop_config["steps"])
    pathlib.Path(loop_config["result"]).write_text(json.dumps(timings))
    ray.train.report({"wall": timings["wall"]})


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--samples", type=int, default=1000)
    args = parser.parse_args()

    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from store.batches import iter_bucketed_batches
    from store.reader import read_table

    with tempfile.TemporaryDirectory() as folder:
        store = pathlib.Path(folder) / "store"
        make_store(store, args.samples)
        in_memory = list(iter_bucketed_batches(read_table(store, 256).to_batches(), BATCH, 256, drop_last=True))
        ray.init(address="local", num_cpus=8, include_dashboard=False, log_to_driver=False)
        plain, remote = [], []
        for round_index in range(args.rounds):
            plain.append(run_steps((in_memory[i % len(in_memory)] for i in range(10**9)), args.steps))
            trainer = TorchTrainer(
                ray_worker,
                train_loop_config={
                    "store": str(store),
                    "steps": args.steps,
                    "result": str(pathlib.Path(folder) / f"ray{round_index}.json"),
                },
                scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1}),
                run_config=RunConfig(name=f"bench{round_index}", storage_path=str(pathlib.Path(folder) / "ray")),
            )
            trainer.fit()
            remote.append(json.loads((pathlib.Path(folder) / f"ray{round_index}.json").read_text()))
            print(f"round {round_index + 1}: plain {plain[-1]['wall']:.2f}s ray {remote[-1]['wall']:.2f}s", flush=True)
        ray.shutdown()

    samples = args.steps * BATCH
    plain_sps = statistics.median(samples / r["wall"] for r in plain)
    ray_sps = statistics.median(samples / r["wall"] for r in remote)
    step_ms = statistics.median(1000 * r["busy"] / args.steps for r in plain)
    # The worker's process CPU beyond its steps' CPU is the data path (reader thread, decoding, prefetch).
    data_cpu = statistics.median(
        max(0.0, r["cpu"] - (p["cpu"])) / samples * 1000 for r, p in zip(remote, plain, strict=True)
    )
    result = {
        "ray_sps": round(ray_sps, 2),
        "plain_sps": round(plain_sps, 2),
        "ratio": round(ray_sps / plain_sps, 3),
        "data_wait_fraction": round(statistics.median(r["wait"] / r["wall"] for r in remote), 4),
        "data_cpu_ms_per_sample": round(data_cpu, 3),
        "step_ms": round(step_ms, 1),
        "batch": BATCH,
        "steps": args.steps,
        "rounds": args.rounds,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
