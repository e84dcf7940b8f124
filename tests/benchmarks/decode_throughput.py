"""Decoding throughput: gptx's KV-cache decoder against Hugging Face `generate` (PyTorch CPU) on the same model.

    python tests/benchmarks/decode_throughput.py [--batch 8 --prompt 64 --new 128 --layers 6 --d_model 384 ...]

Both sides hold the same random GPT-2 weights (converted with gptx.interop.hf) and decode greedily: `--batch`
left-padded prompts of `--prompt` tokens (every other row shorter by a quarter, so the padding path is timed),
`--new` new tokens each, no EOS. Greedy continuations are compared token by token (`greedy_agreement`: the
share of rows whose first 16 new tokens agree; float32 rounding may flip a near-tie later on). Compilation
and one warmup run are excluded; `--repeats` timed runs alternate between the two sides and medians are
reported. torch runs with 1 thread and with all cores; its faster setting is the baseline. One JSON line on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
from machine import LoadWatch


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--prompt", type=int, default=64)
    p.add_argument("--new", type=int, default=128)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--d_model", type=int, default=384)
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--repeats", type=int, default=5)
    return p.parse_args(argv)


def matmul_floor(params, batch: int, steps: int = 64) -> float:
    """Seconds per step of a loop that multiplies a [batch, d] activation by every weight matrix once (the
    embedding table as the tied head): what any decoder holding these float32 weights pays per token."""
    import jax
    import jax.numpy as jnp

    mats = [w for w in jax.tree.leaves(params) if w.ndim == 2]
    width = max(max(w.shape) for w in mats)

    @jax.jit
    def loop(x):
        def body(_, x):
            acc = x
            for w in mats:
                a, b = w.shape
                y = x[:, :a] @ w if a <= b else x[:, :b] @ w.T  # [batch, a] @ [a, b] (or the table transposed)
                acc = acc + 1e-6 * jnp.pad(y[:, :width], ((0, 0), (0, width - y.shape[1])))
            return acc

        return jax.lax.fori_loop(0, steps, body, x)

    x = jnp.ones((batch, width), jnp.float32)
    loop(x).block_until_ready()
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        loop(x).block_until_ready()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) / steps


def main(argv=None) -> None:
    load = LoadWatch()
    args = parse_args(argv)
    sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))
    import jax
    import jax.numpy as jnp
    import torch
    import transformers

    from gptx import config as config_lib
    from gptx import mesh as mesh_lib
    from gptx import sample
    from gptx.interop import hf
    from gptx.models import GPT, GPTConfig

    cfg = config_lib.default()
    cfg.model.update(
        vocab_size=args.vocab,
        block_size=args.prompt + args.new,
        n_layer=args.layers,
        n_head=args.heads,
        d_model=args.d_model,
        dropout=0.0,
        attn_dropout=0.0,
    )
    model = GPT(GPTConfig.from_config(cfg.model))
    params = mesh_lib.strip_annotations(model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"])
    hf_cfg = transformers.GPT2Config(**hf.hf_config_from_model(cfg.model))
    hf_model = transformers.GPT2LMHeadModel(hf_cfg).eval()
    state = {k: torch.as_tensor(np.asarray(v)) for k, v in hf.params_to_hf(params, cfg.model).items()}
    hf_model.load_state_dict(state, strict=False)
    hf_model.tie_weights()

    rng = np.random.default_rng(0)
    lengths = [args.prompt if i % 2 == 0 else args.prompt * 3 // 4 for i in range(args.batch)]
    prompts = [rng.integers(0, args.vocab, n).tolist() for n in lengths]
    tokens, mask = sample.left_pad(prompts)
    sampling = sample.SamplingConfig(max_new_tokens=args.new, temperature=0.0)

    def run_gptx():
        out = sample.decode(model, params, tokens, mask, jax.random.key(0), sampling)
        return np.asarray(jax.block_until_ready(out.tokens))

    hf_inputs = dict(
        input_ids=torch.as_tensor(tokens, dtype=torch.long),
        attention_mask=torch.as_tensor(mask, dtype=torch.long),
        max_new_tokens=args.new,
        min_new_tokens=args.new,
        do_sample=False,
        pad_token_id=0,
    )

    def run_hf(threads: int):
        torch.set_num_threads(threads)
        with torch.no_grad():
            return hf_model.generate(**hf_inputs)[:, tokens.shape[1] :].numpy()

    cores = len(os.sched_getaffinity(0))
    settings = sorted({1, cores})
    ours, theirs = run_gptx(), run_hf(cores)  # compile and warm up
    agreement = float(np.mean([(a[:16] == b[:16]).all() for a, b in zip(ours, theirs, strict=True)]))
    times = {"gptx": [], **{t: [] for t in settings}}
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        run_gptx()
        times["gptx"].append(time.perf_counter() - t0)
        for t in settings:
            t0 = time.perf_counter()
            run_hf(t)
            times[t].append(time.perf_counter() - t0)
    generated = args.batch * args.new
    gptx_tps = generated / statistics.median(times["gptx"])
    hf_by_threads = {str(t): generated / statistics.median(times[t]) for t in settings}
    hf_tps = max(hf_by_threads.values())
    print(f"gptx {gptx_tps:,.0f} tok/s, transformers {hf_tps:,.0f} tok/s", file=sys.stderr)
    # A decoding step of a small batch is bound by reading every weight (and the filled KV cache) once; its
    # floor is a loop of the same weight matmuls at the same batch, measured here (the "matmul floor").
    param_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
    cache_bytes = 2 * args.layers * args.batch * (tokens.shape[1] + args.new / 2) * args.d_model * 4
    step_s = statistics.median(times["gptx"]) / args.new
    floor_s = matmul_floor(params, args.batch)
    print(
        json.dumps(
            {
                "benchmark": "decode_throughput",
                "batch": args.batch,
                "prompt": args.prompt,
                "new_tokens": args.new,
                "model": {"layers": args.layers, "d_model": args.d_model, "heads": args.heads, "vocab": args.vocab},
                "gptx_tokens_per_s": round(gptx_tps, 1),
                "hf_torch_tokens_per_s": round(hf_tps, 1),
                "hf_torch_by_threads": {k: round(v, 1) for k, v in hf_by_threads.items()},
                "ratio": round(gptx_tps / hf_tps, 2),
                "greedy_agreement": agreement,
                "gptx_ms_per_step": round(step_s * 1e3, 3),
                "bytes_per_step": int(param_bytes + cache_bytes),
                "achieved_gb_per_s": round((param_bytes + cache_bytes) / step_s / 1e9, 1),
                "matmul_floor_ms_per_step": round(floor_s * 1e3, 3),
                "floor_fraction": round(floor_s / step_s, 3),
                "repeats": args.repeats,
                "jax": jax.__version__,
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                **load.fields(),
            }
        )
    )


if __name__ == "__main__":
    main()
