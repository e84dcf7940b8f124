"""Attention forward + backward time: Pallas splash attention vs XLA's `dot_product_attention`, dense and banded.

Meant for a TPU; on a CPU `--interpret` runs the splash kernel in Pallas' interpreter as a smoke check (its time
means nothing there). Prints one JSON line with milliseconds per call and splash / xla per layer kind.

  python tests/benchmarks/splash_throughput.py --batch=8 --seq=2048 --heads=16 --head_dim=64 --window=256
  python tests/benchmarks/splash_throughput.py --interpret --batch=1 --seq=256 --heads=2 --head_dim=64 --window=128
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from gptx.models import splash  # noqa: E402
from gptx.models.attention import dot_product_attention  # noqa: E402


def time_ms(fn, *args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))  # compile
    start = time.perf_counter()
    for _ in range(repeats):
        out = fn(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / repeats * 1e3


def fwd_bwd(impl: str, window: int | None, blocks: tuple[int, int]):
    def loss(q, k, v):
        y = dot_product_attention(q, k, v, window=window, implementation=impl, splash_blocks=blocks)
        return jnp.sum(y.astype(jnp.float32))

    return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--head_dim", type=int, default=64)
    p.add_argument("--window", type=int, default=256)
    p.add_argument("--block", type=int, default=splash.DEFAULT_BLOCK)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--interpret", action="store_true", help="allow a non-TPU backend (Pallas interpreter)")
    a = p.parse_args()
    if not a.interpret and jax.default_backend() != "tpu":
        raise SystemExit(f"no TPU here ({jax.default_backend()}); pass --interpret for a smoke check")
    shape = (a.batch, a.seq, a.heads, a.head_dim)
    q, k, v = (jax.random.normal(key, shape, a.dtype) for key in jax.random.split(jax.random.key(0), 3))
    out = dict(backend=jax.default_backend(), shape=list(shape), dtype=a.dtype, window=a.window, block=a.block)
    for kind, window in (("dense", None), ("banded", a.window)):
        ms = {
            impl: time_ms(fwd_bwd(impl, window, (a.block, a.block)), q, k, v, repeats=a.repeats)
            for impl in ("xla", "splash")
        }
        out[kind] = {f"{impl}_ms": round(t, 3) for impl, t in ms.items()}
        out[kind]["splash_over_xla"] = round(ms["splash"] / ms["xla"], 3)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
