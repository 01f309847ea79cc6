"""Load on a local Serve app (tiny preset, CPU): latency under mixed traffic, batching, and a replica killed mid-load.

    .venv/bin/python benchmarks/serve_load.py
    .venv/bin/python benchmarks/serve_load.py --num-requests 200 --size 32x32

Deployments of serving.app on a local Ray, each with the API key set and images small enough (64x64, 2 steps)
that a batch's shared costs matter on CPU:

1. Two generator replicas. ``--num-requests`` requests at concurrency 16, every tenth one hostile (bad JSON, bad or
   huge sizes, huge steps, ``n`` 1000, a 1 MB prompt, wrong types, no key): p50 / p99 latency of the valid ones.
   Then the same load again while one generator replica is killed with ``ray.kill`` a third of the way in: the
   share of valid requests answered 200 (``valid_success_rate_under_replica_kill``; target 0.99; the ingress retries
   on a lost replica), and ``num_retried``, the requests whose answer carried ``X-Generator-Retries`` > 0 (the
   ingress says so on every answer). Over both runs, every request counts: ``num_5xx`` is every 5xx answer, valid or
   hostile (target 0), reported apart as ``num_5xx_valid`` / ``num_5xx_hostile``; ``num_no_answer`` every request
   that got no HTTP answer at all (connection dropped, time-out), likewise split.
2. Two applications side by side, one generator replica each: batching on (up to 4 images per sampler call, so
   that at concurrency 8 one batch computes while the next one's requests arrive) and batching off. Valid images
   per second at concurrency 8, rounds alternating between the two so that other load on the machine hits both
   alike; the ratio of the medians is ``batched_vs_unbatched`` (target 2).

The last line of stdout is one JSON object with the results.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import aiohttp  # noqa: E402
import numpy as np  # noqa: E402
import ray  # noqa: E402
from ray import serve  # noqa: E402

from serving.app import application, local_url  # noqa: E402
from serving.config import ServeSettings  # noqa: E402
from serving.ingress import RETRIES_HEADER  # noqa: E402

API_KEY = "bench-key"
KEY_ENV = "SERVE_LOAD_API_KEY"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
APP = "serve-load"
NUM_ROUNDS = 5
HOSTILE = [
    (b'{"prompt": "a fox", ', AUTH),
    (json.dumps({"prompt": "a", "size": "100x100"}).encode(), AUTH),
    (json.dumps({"prompt": "a", "size": "16384x16384"}).encode(), AUTH),
    (json.dumps({"prompt": "a", "num_inference_steps": -1}).encode(), AUTH),
    (json.dumps({"prompt": "a", "num_inference_steps": 10**9}).encode(), AUTH),
    (json.dumps({"prompt": "a", "n": 1000}).encode(), AUTH),
    (json.dumps({"prompt": "a" * 1_000_000}).encode(), AUTH),
    (json.dumps({"prompt": 42, "n": "2"}).encode(), AUTH),
    (json.dumps({"prompt": "a", "seed": -1}).encode(), AUTH),
    (json.dumps({"prompt": "a fox"}).encode(), {}),
]


def settings(size: str, steps: int, batched: bool) -> ServeSettings:
    return ServeSettings.model_validate(
        {
            "model": {"preset": "tiny", "name": "tiny", "device": "cpu"},
            "limits": {"max_pixels": 256 * 256, "max_steps": 50, "max_n": 4 if batched else 1},
            "defaults": {"size": size, "num_inference_steps": steps},
            "batching": {"max_batch_images": 4 if batched else 1, "wait_timeout_s": 0.02},
            "queue": {"max_in_flight": 64},
            # One key sends every request: a load test of the server, not of one client's rate limit.
            "rate_limit": {"images": None},
            "api_key_env": KEY_ENV,
        }
    )


def deploy(port: int, size: str, steps: int, *, batched: bool, num_replicas: int, name: str) -> str:
    options = {
        "ImageGenerator": {"num_replicas": num_replicas, "max_ongoing_requests": 16},
        "Ingress": {"ray_actor_options": {"num_cpus": 0.5, "runtime_env": {"env_vars": {KEY_ENV: API_KEY}}}},
    }
    route_prefix = f"/{name}"
    serve.run(application(settings(size, steps, batched), options), name=name, route_prefix=route_prefix)
    return local_url({"host": "127.0.0.1", "port": port}, route_prefix)


def request_list(num_requests: int, size: str, steps: int, hostile_every: int) -> list[tuple[bool, bytes, dict]]:
    """(is_valid, body, headers) per request; every ``hostile_every``-th is hostile, cycling through the kinds."""
    items = []
    for index in range(num_requests):
        if hostile_every and index % hostile_every == hostile_every - 1:
            body, headers = HOSTILE[(index // hostile_every) % len(HOSTILE)]
            items.append((False, body, headers))
        else:
            body = {"prompt": f"a photo of thing number {index}", "size": size, "num_inference_steps": steps}
            items.append((True, json.dumps({**body, "seed": index}).encode(), AUTH))
    return items


async def run_load(url: str, items: list, concurrency: int, on_progress=None) -> list[dict]:
    """Send every item with at most ``concurrency`` in flight; one record (valid, status, latency) per request."""
    semaphore = asyncio.Semaphore(concurrency)
    records: list[dict] = []
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def one(valid: bool, body: bytes, headers: dict) -> None:
            async with semaphore:
                start = time.perf_counter()
                retries = 0
                try:
                    async with session.post(
                        f"{url}/v1/images/generations",
                        data=body,
                        headers={**headers, "Content-Type": "application/json"},
                    ) as response:
                        await response.read()
                        status = response.status
                        retries = int(response.headers.get(RETRIES_HEADER, "0"))
                except (TimeoutError, aiohttp.ClientError):
                    status = -1  # no answer at all: counted as a failure
                milliseconds = 1000 * (time.perf_counter() - start)
                records.append({"valid": valid, "status": status, "ms": milliseconds, "retries": retries})
                if on_progress is not None:
                    on_progress(len(records))

        await asyncio.gather(*(one(*item) for item in items))
    return records


def generator_replicas(app: str) -> list[str]:
    return sorted(
        actor["name"]
        for actor in ray.util.list_named_actors(all_namespaces=True)
        if actor["namespace"] == "serve" and actor["name"].startswith(f"SERVE_REPLICA::{app}#ImageGenerator#")
    )


def throughput(url: str, size: str, steps: int, concurrency: int, num_requests: int) -> float:
    """Valid images per second at ``concurrency``."""
    start = time.perf_counter()
    records = asyncio.run(run_load(url, request_list(num_requests, size, steps, 0), concurrency))
    elapsed = time.perf_counter() - start
    assert all(record["status"] == 200 for record in records), {r["status"] for r in records}
    return num_requests / elapsed


def summarise(records: list[dict]) -> dict:
    valid = [r for r in records if r["valid"]]
    hostile = [r for r in records if not r["valid"]]
    ok = [r["ms"] for r in valid if r["status"] == 200]
    return {
        "requests": len(records),
        "valid_ok": len(ok),
        "valid": len(valid),
        "hostile": len(hostile),
        "p50_ms": float(np.percentile(ok, 50)) if ok else None,
        "p99_ms": float(np.percentile(ok, 99)) if ok else None,
        "hostile_4xx": sum(400 <= r["status"] < 500 for r in hostile),
        "hostile_5xx": sum(r["status"] >= 500 for r in hostile),
        "hostile_no_answer": sum(r["status"] == -1 for r in hostile),
        "valid_5xx": sum(r["status"] >= 500 for r in valid),
        "valid_no_answer": sum(r["status"] == -1 for r in valid),
        "retried": sum(r["retries"] > 0 for r in records),
        "retries": sum(r["retries"] for r in records),
    }


def mixed_load_and_kill(port: int, size: str, steps: int, num_requests: int) -> tuple[dict, dict]:
    """Summaries of the mixed load on two generator replicas, without and with one replica killed a third in."""
    url = deploy(port, size, steps, batched=True, num_replicas=2, name=APP)
    load = summarise(asyncio.run(run_load(url, request_list(num_requests, size, steps, 10), 16)))
    print(f"[serve_load] mixed load, 2 replicas, concurrency 16: {load}", flush=True)

    replicas = generator_replicas(APP)
    assert len(replicas) == 2, replicas
    victim = ray.get_actor(replicas[0], namespace="serve")
    killed = False

    def kill_one(done: int) -> None:
        nonlocal killed
        if done >= num_requests // 3 and not killed:
            killed = True
            ray.kill(victim, no_restart=True)
            print(f"[serve_load] killed {replicas[0]} after {done} requests", flush=True)

    kill_run = summarise(asyncio.run(run_load(url, request_list(num_requests, size, steps, 10), 16, kill_one)))
    print(f"[serve_load] same load, one replica killed: {kill_run}", flush=True)
    serve.delete(APP)
    return load, kill_run


def batching_rates(port: int, size: str, steps: int) -> tuple[float, float]:
    """Median images/s at concurrency 8 of one replica with batching on and off, measured in alternating rounds."""
    urls = {
        batched: deploy(port, size, steps, batched=batched, num_replicas=1, name=name)
        for batched, name in ((True, "batched"), (False, "unbatched"))
    }
    rates: dict[bool, list[float]] = {True: [], False: []}
    for url in urls.values():  # warm-up: the first calls of a fresh replica are slower
        throughput(url, size, steps, concurrency=8, num_requests=16)
    for _ in range(NUM_ROUNDS):
        for batched, url in urls.items():
            rates[batched].append(throughput(url, size, steps, concurrency=8, num_requests=48))
    rounds = f"batched {[round(r, 2) for r in rates[True]]}, unbatched {[round(r, 2) for r in rates[False]]}"
    print(f"[serve_load] images/s at concurrency 8, 1 replica each, by round: {rounds}", flush=True)
    return float(np.median(rates[True])), float(np.median(rates[False]))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-requests", type=int, default=500)
    parser.add_argument("--size", default="64x64")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args(argv)

    # Its own local Ray, never a cluster found on the machine: the numbers are about this machine alone.
    ray.init(address="local", num_cpus=16, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": args.port})
    load, kill_run = mixed_load_and_kill(args.port, args.size, args.steps, args.num_requests)
    batched_rate, unbatched_rate = batching_rates(args.port, args.size, args.steps)
    serve.shutdown()

    result = {
        "p50_ms": round(load["p50_ms"], 1),
        "p99_ms": round(load["p99_ms"], 1),
        "batched_vs_unbatched": round(batched_rate / unbatched_rate, 2),
        "valid_success_rate_under_replica_kill": round(kill_run["valid_ok"] / kill_run["valid"], 4),
        # Every request of both mixed runs counts (the target for each: 0).
        "num_requests_sent": load["requests"] + kill_run["requests"],
        "num_5xx": sum(run[key] for run in (load, kill_run) for key in ("valid_5xx", "hostile_5xx")),
        "num_5xx_valid": load["valid_5xx"] + kill_run["valid_5xx"],
        "num_5xx_hostile": load["hostile_5xx"] + kill_run["hostile_5xx"],
        "num_no_answer": sum(run[key] for run in (load, kill_run) for key in ("valid_no_answer", "hostile_no_answer")),
        "num_no_answer_hostile": load["hostile_no_answer"] + kill_run["hostile_no_answer"],
        # Requests the ingress retried on another replica, from its X-Generator-Retries header.
        "num_retried": load["retried"] + kill_run["retried"],
        "num_retried_under_replica_kill": kill_run["retried"],
        "images_per_s_batched": round(batched_rate, 2),
        "images_per_s_unbatched": round(unbatched_rate, 2),
        "size": args.size,
        "steps": args.steps,
        "num_requests": args.num_requests,
    }
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
