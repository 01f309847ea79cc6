"""Capacity planner: producer and consumer pool sizes that keep training fed, from measured benchmark output.

    python benchmarks/producer_cpu.py | tee producer_cpu.txt      # each benchmark prints one JSON line last
    python benchmarks/encode.py | tee encode.txt
    python benchmarks/train_overhead.py | tee train.txt
    python jobs/plan.py --producer-cpu producer_cpu.txt --encode encode.txt --train train.txt --target-sps 2000
    python jobs/plan.py ... --encode encode_gpu.txt --encode-per gpu --epochs 4 --keep-fraction 0.3

Training consumes ``target`` samples/s; with ``epochs`` passes over the store, producers must add ``target /
epochs`` new samples/s to it, and score ``1 / keep_fraction`` input rows per sample they keep (the funnel's
survivors share). Each pool needs ``rate / (measured rate per device) x headroom`` devices; nodes follow from the
devices per node. The output names the config keys, command-line overrides and autoscaler bounds that set them
(``platform/README.md`` maps one onto the other).
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib


def last_json(path: str) -> dict:
    """The JSON object a benchmark prints as its last line (its other lines are progress)."""
    lines = [line for line in pathlib.Path(path).read_text().splitlines() if line.strip()]
    if not lines or not lines[-1].lstrip().startswith("{"):
        raise ValueError(f"{path}: the last line is not a benchmark's JSON object; save the benchmark's whole output")
    return json.loads(lines[-1])


def pool(name: str, rate: float, per_device: float, headroom: float, device: str) -> int:
    """Devices for ``rate`` samples/s at ``per_device`` each, printing the arithmetic."""
    count = math.ceil(rate * headroom / per_device)
    print(f"  {name:<26} {rate:9.2f} /s x {headroom:.2f} headroom / {per_device:8.2f} per {device} = {count} {device}")
    return count


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--producer-cpu", required=True, help="output of benchmarks/producer_cpu.py")
    parser.add_argument("--encode", required=True, help="output of benchmarks/encode.py")
    parser.add_argument("--encode-per", choices=("cpu", "gpu"), default="cpu", help="device encode.py measured")
    parser.add_argument("--train", required=True, help="output of benchmarks/train_overhead.py")
    parser.add_argument("--target-sps", type=float, required=True, help="training throughput to feed, samples/s")
    parser.add_argument("--epochs", type=float, default=1.0, help="passes training makes over each stored sample")
    parser.add_argument("--keep-fraction", type=float, default=1.0, help="share of input rows that are encoded")
    parser.add_argument("--headroom", type=float, default=1.2, help="spare capacity on every pool")
    parser.add_argument("--cpus-per-node", type=int, default=32, help="CPUs of a producer-cpu node")
    parser.add_argument("--gpus-per-node", type=int, default=8, help="GPUs of a GPU node")
    args = parser.parse_args(argv)
    for name in ("target_sps", "epochs", "keep_fraction", "headroom"):
        if getattr(args, name) <= 0 or (name == "keep_fraction" and args.keep_fraction > 1):
            parser.error(f"--{name.replace('_', '-')} must be positive (and at most 1 for --keep-fraction)")

    scoring, encode, train = last_json(args.producer_cpu), last_json(args.encode), last_json(args.train)
    stored_rate = args.target_sps / args.epochs
    input_rate = stored_rate / args.keep_fraction
    print(f"training consumes {args.target_sps:.2f} samples/s; over {args.epochs:g} epochs the store must grow by")
    print(f"  {args.target_sps:.2f} / {args.epochs:g} = {stored_rate:.2f} samples/s, scored from")
    print(f"  {stored_rate:.2f} / {args.keep_fraction:g} kept = {input_rate:.2f} input rows/s")
    print("pools (measured rate per device from the benchmarks):")
    device = args.encode_per
    sizes = {
        "cpu_pool": pool("cpu_pool (score)", input_rate, scoring["pipeline_ips_per_core"], args.headroom, "cpu"),
        "encode.vae_pool": pool("encode.vae_pool", stored_rate, encode["vae_batched_sps"], args.headroom, device),
        "encode.text_pool": pool("encode.text_pool", stored_rate, encode["text_batched_sps"], args.headroom, device),
        "num_workers": pool("num_workers (train)", args.target_sps, train["ray_sps"], 1.0, "worker"),
    }
    encoder_devices = sizes["encode.vae_pool"] + sizes["encode.text_pool"]
    producer_cpus = sizes["cpu_pool"] + (encoder_devices if device == "cpu" else 0)
    nodes = {
        "producer-cpu": math.ceil(producer_cpus / args.cpus_per_node),
        "producer-gpu": math.ceil(encoder_devices / args.gpus_per_node) if device == "gpu" else 0,
        "consumer-gpu": math.ceil(sizes["num_workers"] / args.gpus_per_node),
    }
    print("nodes (autoscaler max_workers / maxReplicas per group):")
    print(f"  producer-cpu: ceil({producer_cpus} cpu / {args.cpus_per_node}) = {nodes['producer-cpu']}")
    print(
        f"  producer-gpu: ceil({encoder_devices if device == 'gpu' else 0} gpu / {args.gpus_per_node}) = "
        f"{nodes['producer-gpu']}"
    )
    print(f"  consumer-gpu: ceil({sizes['num_workers']} workers / {args.gpus_per_node}) = {nodes['consumer-gpu']}")
    print("overrides:")
    print(
        f"  jobs/preprocess.py ... cpu_pool.max_size={sizes['cpu_pool']} "
        f"encode.vae_pool.max_size={sizes['encode.vae_pool']} encode.text_pool.max_size={sizes['encode.text_pool']}"
    )
    print(f"  jobs/pretrain.py ... num_workers={sizes['num_workers']}")
    plan = {"target_sps": args.target_sps, "stored_sps": stored_rate, "input_sps": input_rate, **sizes, "nodes": nodes}
    print(json.dumps(plan))
    return plan


if __name__ == "__main__":
    main()
