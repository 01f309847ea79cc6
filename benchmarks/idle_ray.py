"""What an idle local Ray costs a small machine: with Ray's default worker pool, and with the local settings that
``models.ray_runtime.init_ray`` uses (no idle workers started ahead of need, at most two kept).

    python benchmarks/idle_ray.py [--seconds 20] [--settle 25] [--rounds 0]

Each variant starts a local Ray of 16 logical CPUs in a child process (as ``init_ray`` does on two cores), waits
``--settle`` seconds for its start-up to finish, then counts for ``--seconds`` the CPU time and the context switches
(every thread of every process on the machine, so Ray's own daemons are included) and the worker processes waiting
idle. With ``--rounds N``, beside an idle local Ray with the local settings, the nano training step
(``benchmarks/cpu_bf16.py``'s fp32 step, two threads, median of 20) then runs in a process at nice 15 (Ray's
default for its workers) and at nice 0, alternating N times: whether that niceness slows training on a small
machine. Last line: one JSON object with, per variant, ``cpu_share`` (of the whole machine),
``context_switches_per_s``, ``idle_workers`` and the machine's steal share meanwhile (``models.host``), and with
``--rounds``, ``step_s_nice15`` / ``step_s_nice0``: the step's seconds in each round.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import textwrap
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from models.host import cpu_shares, cpu_times  # noqa: E402

CHILD = textwrap.dedent(
    """
    import json, logging, sys, time
    import ray
    ray.init(address="local", num_cpus=16, include_dashboard=False, log_to_driver=False,
             logging_level=logging.WARNING, _system_config=json.loads(sys.argv[1]))
    print("up", flush=True)
    sys.stdin.read()  # until the parent closes it
    ray.shutdown()
    """
)


def process_counters() -> dict[str, tuple[float, int, str]]:
    """CPU seconds, context switches (all threads) and command line of every process."""
    ticks = os.sysconf("SC_CLK_TCK")
    counters = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            command = pathlib.Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
            switches = 0
            for task in os.listdir(f"/proc/{pid}/task"):
                for line in pathlib.Path(f"/proc/{pid}/task/{task}/status").read_text().splitlines():
                    if "ctxt_switches" in line:
                        switches += int(line.split()[1])
        except (OSError, ValueError):
            continue  # a process or thread that ended meanwhile
        counters[pid] = ((int(fields[11]) + int(fields[12])) / ticks, switches, command)
    return counters


STEP = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, sys.argv[1])
    import torch
    torch.set_num_threads(2)
    from cpu_bf16 import step_seconds
    print(json.dumps(step_seconds(False, False, 20)))
    """
)


def start_ray(system_config: dict) -> subprocess.Popen:
    """A local Ray in a child process, up when this returns; it shuts down when its stdin is closed."""
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, json.dumps(system_config)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    if child.stdout.readline().strip() != "up":
        child.kill()
        raise RuntimeError("the local Ray did not start")
    return child


def stop_ray(child: subprocess.Popen) -> None:
    child.stdin.close()
    child.wait(timeout=120)


def measure(system_config: dict, seconds: float, settle: float) -> dict:
    child = start_ray(system_config)
    try:
        time.sleep(settle)
        start, start_cpu = process_counters(), cpu_times()
        time.sleep(seconds)
        end, end_cpu = process_counters(), cpu_times()
    finally:
        stop_ray(child)
    cpu = sum(end[pid][0] - start[pid][0] for pid in end if pid in start)
    switches = sum(end[pid][1] - start[pid][1] for pid in end if pid in start)
    return {
        "cpu_share": round(cpu / (seconds * (os.cpu_count() or 1)), 3),
        "context_switches_per_s": round(switches / seconds),
        "idle_workers": sum(1 for _, _, command in end.values() if command.startswith("ray::IDLE")),
        "steal": cpu_shares(start_cpu, end_cpu).get("steal"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--settle", type=float, default=25.0)
    parser.add_argument("--rounds", type=int, default=0, help="rounds of the step at nice 15 and 0 (0: none)")
    args = parser.parse_args()
    from models.ray_runtime import local_system_config

    result = {"cpus": os.cpu_count()}
    for name, system_config in (
        ("ray_defaults", {"worker_maximum_startup_concurrency": 16}),
        ("local_settings", local_system_config(16)),
    ):
        result[name] = measure(system_config, args.seconds, args.settle)
        print(f"[idle_ray] {name}: {result[name]}", flush=True)
    if args.rounds:
        here = str(pathlib.Path(__file__).resolve().parent)
        child = start_ray(local_system_config(16))
        try:
            time.sleep(args.settle)
            for niceness in [15, 0] * args.rounds:
                step = subprocess.run(
                    ["nice", "-n", str(niceness), sys.executable, "-c", STEP, here],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                seconds = round(float(step.stdout.strip().splitlines()[-1]), 4)
                result.setdefault(f"step_s_nice{niceness}", []).append(seconds)
                print(f"[idle_ray] step at nice {niceness}: {seconds} s", flush=True)
        finally:
            stop_ray(child)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
