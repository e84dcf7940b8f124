"""Loader throughput: tokens/s out of the grain pipeline for the demo config, as a multiple of what the demo's
train step consumes.

    python tests/benchmarks/loader_throughput.py [--batches 200 --steps 10 --repeats 3 --workers 0]

The loader reads the bundled corpus as `prepare` writes it (ArrayRecord shards, here produced by
`gptx.data.prepare` with the demo's settings), then shuffles, tokenizes with the demo's 1,024-piece
SentencePiece BPE, packs into rows of 128 with segment ids and batches 32 rows, exactly as `train` does
(`gptx.data.loader.lm_dataset`). The train step is the demo's GPT-2 (4 layers, d_model 128) with AdamW on the
same batch shape, compilation excluded. The two sides alternate `--repeats` times (the machine may be shared)
and medians are reported. The goal is a ratio >= 20: the loader is never the bottleneck. stdout gets exactly
one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

from machine import LoadWatch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main(argv=None) -> None:
    load = LoadWatch()
    p = argparse.ArgumentParser()
    p.add_argument("--batches", type=int, default=200, help="loader batches per timed repeat")
    p.add_argument("--steps", type=int, default=10, help="train steps per timed repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workers", type=int, default=0, help="grain worker processes (config.data.worker_count)")
    args = p.parse_args(argv)
    from absl import flags

    flags.FLAGS(sys.argv[:1])  # grain's worker processes read absl flags (an absl app parses them first)

    import importlib.util

    import jax
    import numpy as np
    from flax import linen as nn

    from gptx import config as config_lib
    from gptx import mesh as mesh_lib
    from gptx.data import loader, prepare, records
    from gptx.data import tokenizer as tokenizer_lib
    from gptx.train import lm, pretrain
    from gptx.train import step as step_lib

    spec = importlib.util.spec_from_file_location("demo_config", os.path.join(REPO, "configs", "demo.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cfg = module.get_config()
    seq, batch = config_lib.seq_len(cfg), cfg.train.batch_size

    out = tempfile.mkdtemp(prefix="gptx_loader_bench_")
    cfg.data_prep.update(sources=({"name": "corpus", "path": cfg.data.corpus},), progress=False)
    prepare.run(cfg, out)
    corpus = records.PreparedCorpus(out)
    tok = tokenizer_lib.train(list(corpus.train), cfg.tokenizer.vocab_size)
    log(f"prepared {len(corpus.train)} training documents; tokenizer of {tok.vocab_size} pieces")

    def time_loader() -> float:
        ds = loader.lm_dataset(corpus.train, tok, seq_len=seq, batch_size=batch, seed=0, worker_count=args.workers)
        it = iter(ds)
        next(it)  # start-up (and worker processes) outside the timing
        t0 = time.perf_counter()
        for _ in range(args.batches):
            b = next(it)
        assert b["inputs"].shape == (batch, seq)
        return args.batches * batch * seq / (time.perf_counter() - t0)

    model, init_fn = pretrain.make_model(cfg)
    mesh = mesh_lib.make_mesh(cfg.mesh.copy_and_resolve_references(), devices=jax.devices()[:1])
    sample = next(iter(loader.lm_dataset(corpus.train, tok, seq_len=seq, batch_size=batch, seed=1)))
    with mesh_lib.activation_rules(mesh):
        state = jax.jit(lambda r: nn.meta.unbox(init_fn(r)))(jax.random.key(0))
        step = jax.jit(step_lib.make_train_step(lm.loss(model)), donate_argnums=(0,))
        device_batch = mesh_lib.put_batch(mesh, sample)
        compiled = step.lower(state, device_batch, jax.random.key(1)).compile()
    holder = {"state": state}

    def time_train() -> float:
        s = holder["state"]
        s, m = compiled(s, device_batch, jax.random.key(1))  # warm
        jax.block_until_ready(m)
        t0 = time.perf_counter()
        for _ in range(args.steps):
            s, m = compiled(s, device_batch, jax.random.key(1))
        jax.block_until_ready((s, m))
        holder["state"] = s
        return args.steps * batch * seq / (time.perf_counter() - t0)

    load_rates, train_rates = [], []
    for r in range(args.repeats):
        load_rates.append(time_loader())
        train_rates.append(time_train())
        log(f"repeat {r + 1}: loader {load_rates[-1]:,.0f} tokens/s, train step {train_rates[-1]:,.0f} tokens/s")
    loader_tps, train_tps = statistics.median(load_rates), statistics.median(train_rates)
    print(
        json.dumps(
            {
                "benchmark": "loader_throughput",
                "config": "configs/demo.py",
                "batch": batch,
                "seq_len": seq,
                "workers": args.workers,
                "source": "ArrayRecord shards written by prepare",
                "loader_tokens_per_s": round(loader_tps),
                "train_step_tokens_per_s": round(train_tps),
                "ratio": round(loader_tps / train_tps, 2),
                "goal_ratio": 20,
                "loader_tokens_per_s_all": [round(x) for x in load_rates],
                "train_step_tokens_per_s_all": [round(x) for x in train_rates],
                "cpu_devices": len(jax.devices()),
                "numpy": np.__version__,
                **load.fields(),
            }
        )
    )


if __name__ == "__main__":
    main()
