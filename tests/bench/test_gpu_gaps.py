"""bench/gpu_gaps.py: idle time between device activities, merged over streams, by the pair around each gap; and
the device events of a real (CPU-only) profiler run."""

import torch

from bench.gpu_gaps import Interval, device_intervals, idle_report


def test_idle_report_merges_streams_and_ranks_pairs():
    ivs = [Interval(0, 100, "a"), Interval(50, 120, "b"),  # two streams overlapping: busy 0-120
           Interval(220, 300, "sort"),  # 100 us idle after b
           Interval(300, 310, "c"),  # back to back: no gap
           Interval(1310, 1400, "sort"),  # 1000 us idle after c
           Interval(1405, 1500, "d"),  # 5 us: under min_gap_us
           Interval(2000, 2100, "sort")]  # 500 us idle after d
    r = idle_report(ivs, min_gap_us=20)
    assert r["span_s"] == 2100e-6 and r["idle_s"] == round(1605e-6, 4) and r["busy_s"] == round(495e-6, 4)
    assert r["gaps_over_min"] == 3 and r["idle_in_gaps_over_min_s"] == 1600e-6
    assert r["top_pairs"] == [["c -> sort", 1.0, 1], ["d -> sort", 0.5, 1], ["b -> sort", 0.1, 1]]
    # an interval inside a longer one does not end the merged run early
    r2 = idle_report([Interval(0, 1000, "long"), Interval(10, 20, "short"), Interval(1100, 1200, "x")])
    assert r2["top_pairs"] == [["long -> x", 0.1, 1]]
    assert idle_report([])["idle_s"] == 0.0


def test_device_intervals_of_a_cpu_run_are_empty():
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        torch.ones(64, 64) @ torch.ones(64, 64)
    assert device_intervals(prof) == []
