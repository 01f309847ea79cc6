"""What this machine's CPUs did over a span of time: busy, idle, and stolen (Linux ``/proc/stat``).

On a virtual machine the hypervisor may run other guests on the cores this one was given; the time its vCPUs were
ready to run but not running is "steal". On the 2-core machines this project is measured on, steal came and went
between 0 and 56% of the CPU time within minutes (docs/nano.md): a run's wall time alone says little without it, so
the demo and the benchmarks report the shares next to their minutes.
"""

from __future__ import annotations

import dataclasses
import pathlib

PROC_STAT = pathlib.Path("/proc/stat")


@dataclasses.dataclass(frozen=True)
class CpuTimes:
    """Cumulative CPU time of every core, in clock ticks: working, idle (waiting for I/O included), stolen."""

    busy: int
    idle: int
    steal: int


def parse_cpu_times(stat_text: str) -> CpuTimes:
    """The aggregate ``cpu`` line of ``/proc/stat``: user nice system idle iowait irq softirq steal [guest ...]
    (guest time is already inside user time, so it is not added again)."""
    for line in stat_text.splitlines():
        fields = line.split()
        if fields and fields[0] == "cpu":
            user, nice, system, idle, iowait, irq, softirq, steal = (int(value) for value in fields[1:9])
            return CpuTimes(busy=user + nice + system + irq + softirq, idle=idle + iowait, steal=steal)
    raise ValueError("no aggregate 'cpu' line in the /proc/stat text")


def cpu_times() -> CpuTimes | None:
    """The machine's CPU times now; None where ``/proc/stat`` cannot be read (not Linux)."""
    try:
        return parse_cpu_times(PROC_STAT.read_text())
    except OSError:
        return None


def cpu_shares(start: CpuTimes | None, end: CpuTimes | None) -> dict[str, float]:
    """Shares of the CPU time between two readings that were busy, idle and stolen (they sum to 1); empty when
    either reading is missing or no time passed."""
    if start is None or end is None:
        return {}
    spans = {
        "busy": end.busy - start.busy,
        "idle": end.idle - start.idle,
        "steal": end.steal - start.steal,
    }
    total = sum(spans.values())
    if total <= 0:
        return {}
    return {name: round(span / total, 3) for name, span in spans.items()}
