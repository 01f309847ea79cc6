"""Connecting a job to Ray: the cluster at ``RAY_ADDRESS`` when set, otherwise a local Ray on this machine.

A local Ray oversubscribes logical CPUs (8 per core, at least 16): a producer job keeps one actor alive per stage
(decode, CLIP, captioner, OCR, faces, synthesis, encoders: about ten pools), each holding a logical CPU, and a pool
whose first actor cannot be placed stalls the whole stream; a train worker holding every CPU would likewise starve
Ray Data (docs/costs.md §3). The actors mostly wait on each other, so the oversubscription costs little.

What a person sees is the job's own lines: progress of each stage (Ray Data's bars in a terminal, one line per pass
otherwise) and of training (the driver follows the metrics, ``training.progress``), then the summary. Ray's own
output goes to its log files, printed once at the start: workers' stdout and stderr are not forwarded
(``log_to_driver=False``; a failure still reaches the driver as the exception it raised), and Ray's, Ray Data's and
Ray Train's console loggers show warnings and errors only.

On a local Ray, Ray Train's controller polls its workers every 0.25 s instead of every 2 s
(``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S``, which Ray Train passes from the driver to its controller; an operator's
value wins). Every ``ray.train.report`` with a checkpoint waits for that poll, and on one machine a poll is cheap: a
run with six checkpoints took 9 s instead of 22 (docs/costs.md §3). Nor does a local Ray start Ray Train's preemption
watcher (``RAY_TRAIN_ENABLE_PREEMPTION_WATCHER=0``): it polls for nodes being drained (spot reclaims), which one
machine does not have, and costs a process start per run. On a cluster, Ray's defaults stand.

Nor does a local Ray start idle workers ahead of need, and it keeps at most two idle ones (``local_system_config``).
By default Ray starts one worker process per logical CPU at once (16 here, 2-3 CPU-seconds each) and keeps as many
idle: on two cores an idle local Ray then took 9% of the CPU time and 2,900 context switches a second, each
preempting a training thread that its partner waits for at the next parallel region; without them, 3% and 465
(``benchmarks/idle_ray.py``). Workers still start as tasks and actors need them, as many at once as there are
logical CPUs.

Reads on such a Ray (or on several raylets of one machine, as the platform tests start) are split for the
machine's cores, not its logical CPUs (``local_read_blocks``). Ray Data splits a read into twice the CPUs it sees
(32 blocks here; a small corpus then gets a block per row) and runs a task per block, up to a logical CPU each: a
dozen worker processes at once, each starting Python and importing the source's modules (about 5 CPU-seconds here)
for a row or two. With twice the cores (4 blocks) the same reads start a few processes and the same rows come out.
The latent store's reads for training keep Ray Data's blocks (a train worker's shuffle buffer and read-ahead work on
them; fewer blocks there are not measured).
"""

from __future__ import annotations

import logging
import os
import sys

import ray

# The libraries' loggers whose console output is cut to warnings (their log files keep everything).
QUIET_LOGGERS = ("ray", "ray.data", "ray.train", "ray.serve", "ray.tune")
_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"
_AUTH_NOTICE = "Token authentication is enabled for this Ray cluster."
TRAIN_POLL_ENV, LOCAL_TRAIN_POLL_S = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25"
PREEMPTION_WATCHER_ENV = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"
LOCAL_IDLE_WORKERS = 2


def local_system_config(num_cpus: int) -> dict:
    """Ray's system settings for a local Ray of ``num_cpus`` logical CPUs (see the module's doc)."""
    return {
        # The oversubscribed pools start many workers at once on purpose: the raylet may start as many workers
        # concurrently as there are logical CPUs (else it warns at 4x the physical cores, over and over).
        "worker_maximum_startup_concurrency": num_cpus,
        "enable_worker_prestart": False,
        "prestart_worker_first_driver": False,
        "num_workers_soft_limit": LOCAL_IDLE_WORKERS,
    }


def use_local_train_settings() -> None:
    """Ray Train's controllers started from this process poll their workers every 0.25 s and start no preemption
    watcher (see the module's doc); a value the operator set wins."""
    os.environ.setdefault(TRAIN_POLL_ENV, LOCAL_TRAIN_POLL_S)
    os.environ.setdefault(PREEMPTION_WATCHER_ENV, "0")


def _drop_auth_notice(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith(_AUTH_NOTICE)


def init_ray(num_cpus: int | None = None) -> dict:
    """Connect (or start a local Ray) once per process; returns the cluster's resources."""
    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
        quiet = {"log_to_driver": False, "logging_level": logging.WARNING}
        if address:
            context = ray.init(address=address, **quiet)
            where = f"connected to the Ray cluster at {address}"
        else:
            cpus = num_cpus or max(16, 8 * (os.cpu_count() or 1))
            # Token authentication stays on (Ray's default for a new local cluster); our own line says so, in place
            # of Ray's notice that it chose it. (Setting RAY_AUTH_MODE here would be too late: Ray reads it when
            # imported, and a driver and a GCS that disagree cannot talk.)
            logging.getLogger(_AUTH_LOGGER).addFilter(_drop_auth_notice)
            use_local_train_settings()
            # address="local": start our own, never attach to a Ray another process left running on this machine.
            context = ray.init(
                address="local",
                num_cpus=cpus,
                include_dashboard=False,
                _system_config=local_system_config(cpus),
                **quiet,
            )
            where = f"started a local Ray ({cpus} logical CPUs, token authentication on)"
        quiet_console()
        session = getattr(context, "address_info", {}).get("session_dir")
        print(f"[ray] {where}; Ray's own logs: {session}/logs" if session else f"[ray] {where}", flush=True)
    return ray.cluster_resources()


def local_read_blocks() -> int | None:
    """Blocks for a Ray Data read (its ``override_num_blocks``): twice this machine's cores on a Ray whose nodes all
    run on this machine with more logical CPUs than cores (the oversubscribed local Ray, or a test's ``Cluster`` of
    several raylets), else None (Ray Data's own choice)."""
    if not ray.is_initialized():
        return None
    cores = os.cpu_count() or 1
    nodes = [node for node in ray.nodes() if node.get("Alive")]
    here = ray.util.get_node_ip_address()
    if not nodes or any(node.get("NodeManagerAddress") != here for node in nodes):
        return None
    return 2 * cores if sum(node.get("Resources", {}).get("CPU", 0) for node in nodes) > cores else None


def quiet_console() -> None:
    """Warnings and errors only from Ray's loggers on the console; Ray Data's progress bars only in a terminal (the
    jobs print a line per pass otherwise)."""
    import ray.data
    from ray.util.debug import log_once

    for name in QUIET_LOGGERS:
        for handler in logging.getLogger(name).handlers:
            if not isinstance(handler, logging.FileHandler):
                handler.setLevel(logging.WARNING)
    terminal = sys.stdout.isatty()
    ray.data.DataContext.get_current().enable_progress_bars = terminal
    if not terminal:
        log_once("ray_data_progress_manager_disabled")  # Ray Data's one-time notice that bars are off: we chose it
