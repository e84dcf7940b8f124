"""Single-GPU step time, tokens/s and MFU of the jitted gptx train step for GPT-3 350M (configs/gpt3.py:350m).

    python tests/benchmarks/mfu_gpu.py                       # 350M, seq 2048, bf16, batch 8, cuDNN attention
    python tests/benchmarks/mfu_gpu.py --batch 16 --remat dots_no_batch --attention_impl xla
    python tests/benchmarks/mfu_gpu.py --tiny                # a toy model that runs on a CPU in seconds

Meant for one NVIDIA H200 (peak 989e12 dense bf16 FLOP/s, from gptx.flops.PEAK_FLOPS). The model, optimizer
(AdamW + clipping from the config) and step are exactly gptx's: `GPT`, `make_optimizer`,
`gptx.train.step.make_train_step(lm.loss(model))`, jitted with the state donated, inside a one-device mesh's
activation rules.
Compilation and `--warmup` steps are excluded; each of `--repeats` timed repeats runs `--steps` steps and the
medians are reported. MFU = flops_per_token(model, seq) * tokens/s / peak_flops_per_device (model FLOPs, so
rematerialisation does not count). stdout gets exactly one JSON line; progress goes to stderr.

`--tiny` shrinks the model (2 layers, d_model 128, vocab 512, seq 128, batch 2) and uses XLA attention, so the
script can be checked on a CPU; MFU is then null (no known peak for CPUs) unless --peak_flops is given.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import statistics
import sys
import time

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="350m", help="row of configs/gpt3.py (125m, 350m, 760m, ...)")
    p.add_argument("--batch", type=int, default=8, help="sequences per step on the one device")
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument(
        "--remat",
        default=None,
        choices=("none", "full", "dots", "dots_no_batch"),
        help="remat policy; default: the config's (dots_no_batch)",
    )
    p.add_argument("--attention_impl", default="cudnn", choices=("auto", "xla", "cudnn"))
    p.add_argument(
        "--dtype",
        default="bfloat16",
        choices=("bfloat16", "float32", "float16"),
        help="compute dtype (parameters stay float32)",
    )
    p.add_argument(
        "--scan_layers", default=None, choices=("true", "false"), help="scan over layers; default: the config's (true)"
    )
    p.add_argument("--segment_ids", action="store_true", help="packed-sequence segment ids (all 1) in the batch")
    p.add_argument("--steps", type=int, default=10, help="steps per timed repeat")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--peak_flops", type=float, default=0.0, help="override the device's peak FLOP/s")
    p.add_argument("--xla_flags", default="", help="appended to XLA_FLAGS before jax is imported")
    p.add_argument("--tiny", action="store_true", help="a toy model for a CPU smoke test")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def log(*a) -> None:
    print(*a, file=sys.stderr, flush=True)


def load_gpt3_config(size: str):
    """configs/gpt3.py:SIZE, loaded from the repository path (configs/ is not a package)."""
    spec = importlib.util.spec_from_file_location("gptx_configs_gpt3", os.path.join(REPO, "configs", "gpt3.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(size)


def build_config(args):
    cfg = load_gpt3_config(args.size)
    m = cfg.model
    m.dtype = args.dtype
    m.attention_impl = args.attention_impl
    if args.remat is not None:
        m.remat = args.remat
    if args.scan_layers is not None:
        m.scan_layers = args.scan_layers == "true"
    seq = args.seq
    if args.tiny:
        m.update(n_layer=2, d_model=128, n_head=4, d_head=32, vocab_size=512, local_window=32)
        if args.attention_impl == "cudnn":
            m.attention_impl = "xla"
        seq = min(seq, 128)
        m.block_size = max(seq, 128)
    m.block_size = max(m.block_size, seq)
    cfg.data.seq_len = seq
    cfg.train.batch_size = args.batch
    cfg.train.grad_accum = 1
    cfg.mesh.update(data=1, fsdp=1, tensor=1)
    return cfg


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.tiny and args.batch == 8:
        args.batch = 2
    if args.xla_flags:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + args.xla_flags).strip()
    sys.path.insert(0, REPO)

    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import linen as nn

    from gptx import config as config_lib
    from gptx import flops as flops_lib
    from gptx import mesh as mesh_lib
    from gptx.models import GPTConfig
    from gptx.train import lm, pretrain
    from gptx.train import step as step_lib

    cfg = build_config(args)
    config_lib.validate(cfg, num_devices=1)
    gcfg = GPTConfig.from_config(cfg.model)
    seq, batch_size = cfg.data.seq_len, args.batch
    model, init_fn = pretrain.make_model(cfg)
    device = jax.devices()[0]
    mesh = mesh_lib.make_mesh(cfg.mesh, devices=[device])

    rng = np.random.default_rng(args.seed)
    tokens = rng.integers(0, gcfg.vocab_size, (batch_size, seq + 1), dtype=np.int32)
    batch = {
        "inputs": jnp.asarray(tokens[:, :-1]),
        "targets": jnp.asarray(tokens[:, 1:]),
        "positions": jnp.broadcast_to(jnp.arange(seq, dtype=jnp.int32), (batch_size, seq)),
        "segment_ids": jnp.ones((batch_size, seq), jnp.int32) if args.segment_ids else None,
        "weights": jnp.ones((batch_size, seq), jnp.float32),
    }
    log(
        f"{gcfg.name}: {gcfg.n_layer} layers, d_model {gcfg.d_model}, {gcfg.n_head} heads, seq {seq}, "
        f"batch {batch_size}, {gcfg.dtype} compute, remat {gcfg.remat}, attention {gcfg.attention_impl}, "
        f"scan {gcfg.scan_layers} on {device.device_kind}"
    )

    with mesh_lib.activation_rules(mesh):
        state = jax.jit(lambda r: nn.meta.unbox(init_fn(r)))(jax.random.key(args.seed))
        step = jax.jit(step_lib.make_train_step(lm.loss(model)), donate_argnums=(0,))
        step_rng = jax.random.key(args.seed + 1)
        t0 = time.perf_counter()
        compiled = step.lower(state, batch, step_rng).compile()
        compile_s = time.perf_counter() - t0
        log(f"compiled in {compile_s:.1f}s")

        def run(n: int, state):
            metrics = None
            for _ in range(n):
                state, metrics = compiled(state, batch, step_rng)
            jax.block_until_ready((state, metrics))
            return state, metrics

        state, metrics = run(args.warmup, state)
        times = []
        for r in range(args.repeats):
            t0 = time.perf_counter()
            state, metrics = run(args.steps, state)
            dt = (time.perf_counter() - t0) / args.steps
            times.append(dt)
            log(f"  repeat {r}: {dt * 1e3:.2f} ms/step, loss {float(metrics['loss']):.4f}")

    step_s = statistics.median(times)
    tokens_per_step = batch_size * seq
    tokens_per_s = tokens_per_step / step_s
    fpt = flops_lib.flops_per_token(gcfg, seq)
    peak = flops_lib.peak_flops_per_device(args.peak_flops)
    mfu = fpt * tokens_per_s / peak
    n_params = sum(x.size for x in jax.tree.leaves(state.params))
    try:
        mem = device.memory_stats() or {}
    except Exception:  # noqa: BLE001 - not every backend reports memory
        mem = {}
    out = {
        "benchmark": "mfu_gpu",
        "model": gcfg.name,
        "tiny": args.tiny,
        "params": int(n_params),
        "device": device.device_kind,
        "platform": device.platform,
        "seq": seq,
        "batch": batch_size,
        "dtype": str(gcfg.dtype),
        "remat": gcfg.remat,
        "attention_impl": gcfg.attention_impl,
        "scan_layers": gcfg.scan_layers,
        "segment_ids": args.segment_ids,
        "step_time_ms_median": round(step_s * 1e3, 3),
        "step_time_ms_min": round(min(times) * 1e3, 3),
        "step_times_ms": [round(t * 1e3, 3) for t in times],
        "tokens_per_s": round(tokens_per_s, 1),
        "flops_per_token": fpt,
        "model_tflops_per_s": round(fpt * tokens_per_s / 1e12, 3),
        "peak_flops_per_device": None if math.isnan(peak) else peak,
        "mfu": None if math.isnan(mfu) else round(mfu, 4),
        "loss": float(metrics["loss"]),
        "compile_s": round(compile_s, 2),
        "peak_memory_gib": round(mem["peak_bytes_in_use"] / 2**30, 2) if "peak_bytes_in_use" in mem else None,
        "steps": args.steps,
        "repeats": args.repeats,
        "jax": jax.__version__,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
