"""bench/profile_summary.py: per-step figures from a profiler's averaged events (fake events, no GPU)."""

from __future__ import annotations

from types import SimpleNamespace

from bench.profile_summary import profile_summary


def _ev(key, kind, count, dev_us=0.0, cpu_us=0.0):
    return SimpleNamespace(key=key, device_type=SimpleNamespace(name=kind), count=count,
                           self_device_time_total=dev_us, self_cpu_time_total=cpu_us)


def test_per_step_figures_and_host_ops():
    evs = [_ev("_moe_swap_kernel", "CUDA", 16, dev_us=8000), _ev("_fp8_linear_kernel", "CUDA", 40, dev_us=2000),
           _ev("cuLaunchKernelEx", "CPU", 56, cpu_us=600), _ev("aten::item", "CPU", 4, cpu_us=50),
           _ev("aten::empty", "CPU", 200, cpu_us=300)]
    prof = SimpleNamespace(key_averages=lambda: evs)
    s = profile_summary(prof, 2, 0.020)
    assert s["wall_ms"] == 20.0 and s["gpu_ms"] == 5.0 and s["gpu_busy"] == 0.25 and s["moe_ms"] == 4.0
    assert s["gpu_ops_per_step"] == 28 and s["host_launch_calls_per_step"] == {"cuLaunchKernelEx": 28.0}
    assert s["syncs_per_step"] == {"aten::item": 2.0}
    assert s["top_kernels"][0] == ("_moe_swap_kernel", 4.0) and "top_host_ops" not in s
    h = profile_summary(prof, 2, 0.020, host_top=2)
    assert h["top_host_ops"] == [("cuLaunchKernelEx", 28.0, 0.3), ("aten::empty", 100.0, 0.15)]
    assert h["host_ops_per_step"] == 130
