"""torch.profiler results summarized per step (or per pair of steps): wall and GPU kernel time, launches,
host syncs, the longest kernels and host ops (bench/e2e.py's decode and mixed-step profiles)."""

from __future__ import annotations


def profile_summary(prof, steps: int, wall: float, host_top: int = 0) -> dict:
    """Per step (or per unit of `steps`): wall, GPU kernel time and busy fraction, GPU ops, host launch calls,
    host syncs, MoE kernel time, the 16 longest kernels; host_top > 0: also the longest host ops by self CPU
    time (where an eager step's host time goes)."""
    ev = prof.key_averages()
    launch_keys = ("cudaLaunchKernel", "cuLaunchKernel", "cuLaunchKernelEx", "cudaLaunchKernelExC",
                   "cudaGraphLaunch", "cudaMemcpyAsync", "cudaMemsetAsync")
    launches = {e.key: e.count / steps for e in ev if e.key in launch_keys}
    dev = [e for e in ev if e.device_type.name == "CUDA"]
    gpu_ms = sum(e.self_device_time_total for e in dev) / steps / 1e3
    moe_ms = sum(e.self_device_time_total for e in dev if "moe" in e.key.lower()) / steps / 1e3
    syncs = {e.key: e.count / steps for e in ev if e.key in ("aten::item", "aten::_local_scalar_dense",
                                                             "cudaStreamSynchronize", "cudaDeviceSynchronize")}
    top = sorted(dev, key=lambda e: -e.self_device_time_total)[:16]
    out = {}
    if host_top:
        host = sorted((e for e in ev if e.device_type.name == "CPU"), key=lambda e: -e.self_cpu_time_total)
        out["top_host_ops"] = [(e.key[:60], round(e.count / steps, 1), round(e.self_cpu_time_total / steps / 1e3, 3))
                               for e in host[:host_top]]
        out["host_ops_per_step"] = round(sum(e.count for e in ev if e.device_type.name == "CPU") / steps)
    return {"wall_ms": round(wall * 1e3, 3), "gpu_ms": round(gpu_ms, 3),
            "gpu_busy": round(gpu_ms / (wall * 1e3), 3), "gpu_ops_per_step": round(sum(e.count for e in dev) / steps),
            "host_launch_calls_per_step": {k: round(v, 1) for k, v in launches.items()},
            "moe_ms": round(moe_ms, 3), "syncs_per_step": syncs,
            "top_kernels": [(e.key[:60], round(e.self_device_time_total / steps / 1e3, 3)) for e in top], **out}
