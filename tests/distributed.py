"""Running a test function on several gloo processes (the CPU stand-in for GPUs), as PyTorch's own tests do.

``run_ranks(fn, world, *args)`` spawns ``world`` processes that join one process group through a file store and
call ``fn(rank, world, *args)``; an assertion that fails on any rank fails the test with that rank's traceback.
``fn`` must be a module-level function (the processes import it by name). ``run_here(fn, *args)`` runs a world of
one in the test's own process.

The ranks are forked from one forkserver for the whole test session, which imports the model stack once
(``PRELOAD``): a process that imports torch, diffusers and peft itself spends about 8 s of CPU on it, and the
multi-process tests start ten ranks. The forkserver runs no torch operation before it forks (no thread pools to
inherit); each rank is a fresh process from there on, with its own process group.
"""

from __future__ import annotations

import os
import pathlib
import tempfile
from collections.abc import Callable


def _entry(rank: int, fn: Callable, world: int, store: str, args: tuple) -> None:
    import torch.distributed as dist

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        fn(rank, world, *args)
        dist.barrier()
    finally:
        dist.destroy_process_group()


# What every rank function imports: loaded once, in the forkserver.
PRELOAD = ("torch", "torch.distributed", "training.parallel", "training.checkpointer", "models.presets", "peft")


def run_ranks(fn: Callable, world: int, *args, start_method: str = "forkserver") -> None:
    """``start_method="spawn"``: ranks that import everything themselves, for a test that measures a rank's resident
    memory (a forked rank maps the forkserver's libraries lazily, so running torch code there faults library pages
    into its resident size, tens of MB that are not data)."""
    import multiprocessing

    import torch.multiprocessing as mp

    multiprocessing.get_context("forkserver").set_forkserver_preload(list(PRELOAD))  # takes effect at its start
    with tempfile.TemporaryDirectory() as folder:
        store = str(pathlib.Path(folder) / "store")
        mp.start_processes(_entry, args=(fn, world, store, args), nprocs=world, start_method=start_method, join=True)


def run_here(fn: Callable, *args) -> None:
    """``fn(0, 1, *args)`` in this process as a process group of one (no process start), the group removed after."""
    import torch.distributed as dist

    with tempfile.TemporaryDirectory() as folder:
        dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=0, world_size=1)
        try:
            fn(0, 1, *args)
        finally:
            dist.destroy_process_group()


def resident_peak_since_reset() -> int:
    """Bytes: this process's peak resident memory since ``reset_resident_peak`` (Linux's VmHWM)."""
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("/proc/self/status has no VmHWM line")


def resident_now() -> int:
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("/proc/self/status has no VmRSS line")


def reset_resident_peak() -> None:
    """Sets the peak (VmHWM) to the current resident size (writing 5 to /proc/self/clear_refs)."""
    pathlib.Path("/proc/self/clear_refs").write_text("5")
