"""Train-step throughput: gptx (JAX) against Hugging Face GPT2LMHeadModel (PyTorch) on the same shapes.

    python tests/benchmarks/train_throughput.py [--steps 5 --repeats 5 --batch 8 --seq 256 --vocab 50257 ...]

Both sides run one full optimizer step per iteration on the same model: pre-LN GPT-2 blocks with tied
embeddings, tanh GELU, dropout 0, float32, global-norm clipping at 1.0 and AdamW (b1, b2, eps and weight
decay from `gptx.config.default()`, decay on weight matrices only). Warmup steps (and JAX compilation) are
excluded; each of `--repeats` timed repeats runs `--steps` steps, the two sides' repeats alternate (so both
see the same load on a shared machine), and the medians are reported (`*_min` and `ratio_best`: the fastest
repeats). stdout gets exactly one JSON line; everything else goes to stderr.

Threads: XLA's CPU client uses all usable cores by default. torch runs with `torch.set_num_threads(cores)` and,
by default when there is more than one core, also with 1 thread: on a shared machine whose cores are busy with
other work, OpenMP's barrier-synchronised threads can be several times slower than one thread. The baseline
`hf_torch_tokens_per_s` is torch's best setting; every setting is reported under `hf_torch_by_threads`.
`--threads 8` (or `--threads 8,4`) times exactly those settings.

By default the batch has no segment ids (one document per row, as the Hugging Face model sees it), so the
attention is plain causal on both sides; `--segment_ids` times gptx with the packed-sequence mask instead.

XLA CPU flags: `--xla_flags="..."` is appended to XLA_FLAGS before JAX starts; the flags in effect go into the
JSON line. None is applied by default: on jaxlib 0.10.2 (AVX-512 EPYC, 2 cores) none of these changed the step
time beyond noise: --xla_cpu_experimental_ynn_fusion_type= (Eigen dots instead of the default YNNPACK ones),
...=LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_ELTWISE,LIBRARY_FUSION_TYPE_REDUCE,
--xla_cpu_experimental_xnn_fusion_type / --xla_cpu_experimental_onednn_fusion_type=LIBRARY_FUSION_TYPE_DOT,
--xla_cpu_use_onednn, --xla_cpu_multi_thread_eigen=false, --xla_cpu_prefer_vector_width=512 and
--xla_cpu_enable_fast_math (slower). --xla_cpu_use_thunk_runtime is deprecated and ignored.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

from machine import LoadWatch, roofline_fields, xla_flops


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=3, help="optimizer steps per timed repeat")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats; medians are reported")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (JAX: after compilation)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--d_model", type=int, default=384)
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--vocab", type=int, default=50257)
    p.add_argument(
        "--threads",
        default="auto",
        help="torch intra-op thread counts to time, comma-separated; auto: the usable cores and 1",
    )
    p.add_argument("--attention_impl", default="auto", choices=("auto", "xla", "cudnn"))
    p.add_argument("--segment_ids", action="store_true", help="gptx gets packed-sequence segment ids (all 1)")
    p.add_argument("--xla_flags", default="", help="appended to XLA_FLAGS before jax is imported")
    p.add_argument("--only", choices=("both", "gptx", "hf"), default="both")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def log(*a) -> None:
    print(*a, file=sys.stderr, flush=True)


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def time_steps(run_steps, n: int) -> float:
    """Seconds per step of `n` steps."""
    t0 = time.perf_counter()
    run_steps(n)
    return (time.perf_counter() - t0) / n


def bench_gptx(args):
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import linen as nn

    from gptx import config as config_lib
    from gptx import mesh as mesh_lib
    from gptx.train import lm, pretrain
    from gptx.train import step as step_lib

    cfg = config_lib.default()
    cfg.model.update(
        vocab_size=args.vocab,
        block_size=max(args.seq, 1024),
        n_layer=args.layers,
        n_head=args.heads,
        d_model=args.d_model,
        arch="gpt2",
        dropout=0.0,
        attn_dropout=0.0,
        dtype="float32",
        param_dtype="float32",
        attention_impl=args.attention_impl,
    )
    cfg.train.batch_size = args.batch
    cfg.data.seq_len = args.seq
    cfg.mesh.update(data=1, fsdp=1, tensor=1)
    config_lib.validate(cfg)
    model, init_fn = pretrain.make_model(cfg)
    # A one-device mesh: the model's logical constraints resolve against it (all replicated).
    mesh = mesh_lib.make_mesh(cfg.mesh, devices=jax.devices()[:1])

    rng = np.random.default_rng(args.seed)
    tokens = rng.integers(0, args.vocab, (args.batch, args.seq + 1), dtype=np.int32)
    batch = {
        "inputs": jnp.asarray(tokens[:, :-1]),
        "targets": jnp.asarray(tokens[:, 1:]),
        "positions": jnp.broadcast_to(jnp.arange(args.seq, dtype=jnp.int32), (args.batch, args.seq)),
        "segment_ids": jnp.ones((args.batch, args.seq), jnp.int32) if args.segment_ids else None,
        "weights": jnp.ones((args.batch, args.seq), jnp.float32),
    }

    with mesh_lib.activation_rules(mesh):
        state = jax.jit(lambda r: nn.meta.unbox(init_fn(r)))(jax.random.key(args.seed))
        step = jax.jit(step_lib.make_train_step(lm.loss(model)), donate_argnums=(0,))
        step_rng = jax.random.key(args.seed + 1)
        t0 = time.perf_counter()
        compiled = step.lower(state, batch, step_rng).compile()
        compile_s = time.perf_counter() - t0
        log(f"gptx: compiled in {compile_s:.1f}s")
    holder = {"state": state}

    def run_steps(n: int) -> None:
        s = holder["state"]
        metrics = None
        for _ in range(n):
            s, metrics = compiled(s, batch, step_rng)
        jax.block_until_ready((s, metrics))
        holder["state"] = s

    n_params = sum(x.size for x in jax.tree.leaves(state.params))
    return run_steps, {"compile_s": compile_s, "params": int(n_params), "flops_per_step": xla_flops(compiled)}


def bench_hf(args):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from gptx import config as config_lib

    torch.manual_seed(args.seed)
    t = config_lib.default().train
    hf_cfg = GPT2Config(
        vocab_size=args.vocab,
        n_positions=max(args.seq, 1024),
        n_embd=args.d_model,
        n_layer=args.layers,
        n_head=args.heads,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        activation_function="gelu_new",
        layer_norm_epsilon=1e-5,
        tie_word_embeddings=True,
        bos_token_id=min(50256, args.vocab - 1),
        eos_token_id=min(50256, args.vocab - 1),
    )
    model = GPT2LMHeadModel(hf_cfg).float().train()
    # As gptx: weight decay on matrices (and the embedding tables), not on biases or LayerNorm gains.
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=t.lr,
        betas=(t.b1, t.b2),
        eps=t.eps,
    )
    g = torch.Generator().manual_seed(args.seed)
    tokens = torch.randint(0, args.vocab, (args.batch, args.seq + 1), generator=g)
    inputs, targets = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()

    def run_steps(n: int) -> None:
        for _ in range(n):
            opt.zero_grad(set_to_none=True)
            logits = model(input_ids=inputs).logits
            loss = torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
            opt.step()

    n_params = sum(p.numel() for p in model.parameters())
    attn = getattr(model.config, "_attn_implementation", None)
    return run_steps, {"params": int(n_params), "attn": attn}


def main(argv=None) -> None:
    load = LoadWatch()
    args = parse_args(argv)
    if args.xla_flags:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + args.xla_flags).strip()
    sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))
    cores = usable_cores()
    if args.threads == "auto":
        thread_counts = [cores, 1] if cores > 1 else [1]
    else:
        thread_counts = [int(n) for n in args.threads.split(",")]
    tokens_per_step = args.batch * args.seq
    out = {"benchmark": "train_throughput"}

    import jax

    out["jax"] = jax.__version__
    sides = {}
    if args.only in ("both", "gptx"):
        log("gptx (JAX): building and compiling ...")
        sides["gptx"] = bench_gptx(args)
    if args.only in ("both", "hf"):
        import torch
        import transformers

        out["torch"] = torch.__version__
        out["transformers"] = transformers.__version__
        log("Hugging Face GPT2LMHeadModel (torch): building ...")
        run_hf, info = bench_hf(args)
        for n in thread_counts:

            def run_steps(k: int, n=n) -> None:
                torch.set_num_threads(n)
                run_hf(k)

            sides[f"hf_torch_{n}t"] = (run_steps, info)

    # Warm up both, then alternate their timed repeats so that both see the same machine load.
    for name, (run_steps, _) in sides.items():
        log(f"{name}: {args.warmup} warmup steps")
        run_steps(args.warmup)
    times = {name: [] for name in sides}
    for r in range(args.repeats):
        for name, (run_steps, _) in sides.items():
            times[name].append(time_steps(run_steps, args.steps))
            log(f"  repeat {r} {name}: {times[name][-1] * 1e3:.1f} ms/step")

    def summary(name: str) -> dict:
        med = statistics.median(times[name])
        return {
            "tokens_per_s": round(tokens_per_step / med, 1),
            "ms_per_step": round(med * 1e3, 2),
            "ms_per_step_min": round(min(times[name]) * 1e3, 2),
        }

    if "gptx" in sides:
        out.update({f"gptx_{k}": v for k, v in summary("gptx").items()})
        out["gptx_compile_s"] = round(sides["gptx"][1]["compile_s"], 2)
        step_s = statistics.median(times["gptx"])
        out["gptx_xla_flops_per_step"] = sides["gptx"][1]["flops_per_step"]
        out.update(roofline_fields(sides["gptx"][1]["flops_per_step"] / step_s))
    hf_names = [name for name in sides if name.startswith("hf_torch")]
    if hf_names:
        by_threads = {name[len("hf_torch_") : -1]: summary(name) for name in hf_names}
        best = max(by_threads, key=lambda n: by_threads[n]["tokens_per_s"])
        out.update({f"hf_torch_{k}": v for k, v in by_threads[best].items()})
        out["hf_torch_threads"] = int(best)
        out["hf_torch_by_threads"] = by_threads
        out["hf_attn_implementation"] = sides[hf_names[0]][1]["attn"]
    if "gptx" in sides and hf_names:
        out["ratio"] = round(out["gptx_tokens_per_s"] / out["hf_torch_tokens_per_s"], 3)
        out["ratio_best"] = round(out["hf_torch_ms_per_step_min"] / out["gptx_ms_per_step_min"], 3)
        if sides["gptx"][1]["params"] != sides[hf_names[0]][1]["params"]:
            counts = sides["gptx"][1]["params"], sides[hf_names[0]][1]["params"]
            log(f"warning: parameter counts differ: gptx {counts[0]} vs hf {counts[1]}")
    out["params"] = next(iter(sides.values()))[1]["params"]
    out["shapes"] = {
        "batch": args.batch,
        "seq": args.seq,
        "layers": args.layers,
        "d_model": args.d_model,
        "heads": args.heads,
        "vocab": args.vocab,
        "dtype": "float32",
    }
    out["steps"], out["repeats"], out["warmup"] = args.steps, args.repeats, args.warmup
    out["segment_ids"] = args.segment_ids
    out["attention_impl"] = args.attention_impl
    out["threads"] = {"torch": thread_counts, "usable_cores": cores, "jax_cpu": "xla default (all cores)"}
    out["xla_flags"] = os.environ.get("XLA_FLAGS", "")
    out["device"] = jax.devices()[0].device_kind
    out.update(load.fields())
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
