"""Capacity planner: producer and consumer pool sizes that keep training fed, from measured benchmark output.

    python benchmarks/producer_cpu.py | tee producer_cpu.txt      # each benchmark prints one JSON line last
    python benchmarks/encode.py | tee encode.txt
    python benchmarks/train_overhead.py | tee train.txt
    python jobs/plan.py --producer-cpu producer_cpu.txt --encode encode.txt --train train.txt --target-sps 2000
    python jobs/plan.py ... --encode encode_gpu.txt --encode-per gpu --epochs 4 --keep-fraction 0.3
    python jobs/plan.py --serve-config configs/serve_qwen_image_80gb.yaml --serve-gpu-gib 79.6 \
        --serve-bench serve_real.txt --target-ips 2            # serving: memory per profile, replicas, GPUs

Training consumes ``target`` samples/s; with ``epochs`` passes over the store, producers must add ``target /
epochs`` new samples/s to it, and score ``1 / keep_fraction`` input rows per sample they keep (the funnel's
survivors share). Each pool needs ``rate / (measured rate per device) x headroom`` devices; nodes follow from the
devices per node. The output names the config keys, command-line overrides and autoscaler bounds that set them
(``platform/README.md`` maps one onto the other). With ``--encode-per gpu`` the encoder pools are sized in GPUs
from the VAE's and the condition encoder's images/s per GPU.

Serving (``--serve-config``, one or more Serve config files): each profile's memory plan on a GPU of
``--serve-gpu-gib`` (``serving/memory.py``: what each device holds, and whether it fits), and with
``--serve-bench`` (``benchmarks/serve_real.py`` output on the GPU type) and ``--target-ips``, the generator replicas
and GPUs that serve that many images/s: a replica makes ``1 / est_image_s`` images/s in the profile's placement.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))


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


def serve_plan(configs: list[str], gpu_gib: float, bench: str | None, target_ips: float | None, headroom: float):
    """Memory per serving profile, and with a benchmark and a target, replicas and GPUs."""
    import torch

    from serving.config import load_serve_file
    from serving.memory import model_plan, serve_workload

    measured = last_json(bench) if bench else None
    plans = {}
    print(f"serving profiles on GPUs of {gpu_gib:g} GiB:")
    for path in configs:
        served = load_serve_file(path)
        model = served.settings.model.model_copy(update={"gpu_memory_gib": gpu_gib})
        plan = model_plan(model, serve_workload(served.settings), torch.device("cuda"))
        gpus = int(served.deployment_options.get("ImageGenerator", {}).get("ray_actor_options", {}).get("num_gpus", 1))
        entry = {**plan.as_dict(), "gpus_per_replica": gpus}
        print(f"  {path}: {'fits' if entry['fits'] else 'DOES NOT FIT'}")
        for line in plan.lines():
            print(f"    {line}")
        if measured and target_ips:
            profile = (measured.get("profiles") or {}).get(model.placement, {})
            seconds = profile.get("est_image_s", measured["ours_s"])
            replicas = pool(f"{model.placement} replicas", target_ips, 1 / seconds, headroom, "replica")
            entry.update(image_s=seconds, replicas=replicas, gpus=replicas * gpus)
            print(f"    autoscaling_config.max_replicas={replicas} ({replicas * gpus} GPUs at {seconds:g} s per image)")
        plans[path] = entry
    return plans


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--producer-cpu", help="output of benchmarks/producer_cpu.py")
    parser.add_argument("--encode", help="output of benchmarks/encode.py")
    parser.add_argument("--encode-per", choices=("cpu", "gpu"), default="cpu", help="device encode.py measured")
    parser.add_argument("--train", help="output of benchmarks/train_overhead.py")
    parser.add_argument("--target-sps", type=float, help="training throughput to feed, samples/s")
    parser.add_argument("--serve-config", action="append", default=[], help="Serve config file to plan (repeat)")
    parser.add_argument("--serve-gpu-gib", type=float, default=79.0, help="memory of one serving GPU, GiB")
    parser.add_argument("--serve-bench", help="output of benchmarks/serve_real.py on that GPU type")
    parser.add_argument("--target-ips", type=float, help="images/s to serve")
    parser.add_argument("--epochs", type=float, default=1.0, help="passes training makes over each stored sample")
    parser.add_argument("--keep-fraction", type=float, default=1.0, help="share of input rows that are encoded")
    parser.add_argument("--headroom", type=float, default=1.2, help="spare capacity on every pool")
    parser.add_argument("--cpus-per-node", type=int, default=32, help="CPUs of a producer-cpu node")
    parser.add_argument("--gpus-per-node", type=int, default=8, help="GPUs of a GPU node")
    args = parser.parse_args(argv)
    training = (args.producer_cpu, args.encode, args.train, args.target_sps)
    if not args.serve_config and not all(training):
        parser.error("plan training (--producer-cpu, --encode, --train, --target-sps) or serving (--serve-config)")
    if any(training) and not all(training):
        parser.error("training needs all of --producer-cpu, --encode, --train and --target-sps")
    if args.target_ips is not None and (args.target_ips <= 0 or not args.serve_bench):
        parser.error("--target-ips must be positive and needs --serve-bench")
    plan = {}
    if args.serve_config:
        plan["serving"] = serve_plan(
            args.serve_config, args.serve_gpu_gib, args.serve_bench, args.target_ips, args.headroom
        )
    if not all(training):
        print(json.dumps(plan))
        return plan
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
        # images/s per device of the VAE and of the condition encoder (per GPU with --encode-per gpu)
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
    plan.update(target_sps=args.target_sps, stored_sps=stored_rate, input_sps=input_rate, **sizes, nodes=nodes)
    print(json.dumps(plan))
    return plan


if __name__ == "__main__":
    main()
