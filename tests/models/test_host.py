"""The machine's CPU shares (busy, idle, stolen by the hypervisor) that the demo and the benchmarks report."""

from __future__ import annotations

import pytest

from models.host import CpuTimes, cpu_shares, cpu_times, parse_cpu_times

STAT = """cpu  100 5 20 300 10 1 2 40 7 0
cpu0 50 2 10 150 5 0 1 20 7 0
intr 12345
"""


def test_parse_takes_the_aggregate_line_and_leaves_guest_time_inside_user():
    assert parse_cpu_times(STAT) == CpuTimes(busy=100 + 5 + 20 + 1 + 2, idle=300 + 10, steal=40)
    with pytest.raises(ValueError, match="cpu"):
        parse_cpu_times("intr 1\n")


def test_shares_of_a_span_sum_to_one():
    start, end = CpuTimes(busy=100, idle=100, steal=0), CpuTimes(busy=160, idle=120, steal=20)
    assert cpu_shares(start, end) == {"busy": 0.6, "idle": 0.2, "steal": 0.2}
    assert cpu_shares(start, start) == {} and cpu_shares(None, end) == {}


def test_this_machine_reports_its_own_times():
    start = cpu_times()
    if start is None:
        pytest.skip("no /proc/stat here")
    sum(range(2_000_000))  # some work, so that ticks pass
    shares = cpu_shares(start, cpu_times())
    assert not shares or abs(sum(shares.values()) - 1) < 0.01
