"""What a CPU benchmark's JSON line says about the machine it ran on.

A ratio measured beside other work is not a result (PyTorch's OpenMP threads slow down more than XLA's under
load), so every line carries the 1-minute load average at its start and end and `loaded: true` when either is
above 1.5. Where a benchmark knows its FLOPs it also reports the achieved FLOP/s as a fraction of this machine's
matmul roofline, measured in the same process (a 2048 x 2048 float32 matmul in JAX, median of 5).

    from machine import LoadWatch, roofline_fields   # tests/benchmarks is the script's own directory
"""

from __future__ import annotations

import os
import statistics
import time

LOADED = 1.5  # 1-minute load average above which a run says it was not quiet


class LoadWatch:
    """Reads the load average when created and again when `fields()` is called."""

    def __init__(self) -> None:
        self.start = os.getloadavg()[0]

    def fields(self) -> dict:
        end = os.getloadavg()[0]
        return {"load_avg_1m_start_end": [round(self.start, 2), round(end, 2)], "loaded": max(self.start, end) > LOADED}


def matmul_roofline(n: int = 2048, dtype: str = "float32", repeats: int = 5) -> float:
    """Achieved FLOP/s of an n x n x n matmul in JAX on the default device (median of `repeats`)."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), dtype)
    mm = jax.jit(jnp.matmul)
    mm(a, b).block_until_ready()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        mm(a, b).block_until_ready()
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times)


def roofline_fields(flops_per_s: float, roofline: float | None = None) -> dict:
    """{"achieved_gflops", "roofline_gflops", "roofline_fraction"} for a run of `flops_per_s`."""
    roofline = roofline or matmul_roofline()
    return {
        "achieved_gflops": round(flops_per_s / 1e9, 1),
        "roofline_gflops": round(roofline / 1e9, 1),
        "roofline_fraction": round(flops_per_s / roofline, 3),
    }


def xla_flops(compiled) -> float:
    """FLOPs of one call of a compiled JAX program, as XLA's cost analysis counts them."""
    cost = compiled.cost_analysis()
    if isinstance(cost, list | tuple):  # older JAX: one dict per device program
        cost = cost[0]
    return float(cost["flops"])
