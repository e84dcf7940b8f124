"""Evaluation throughput: multiple-choice log-likelihood requests scored by gptx.eval.requests.LM (JAX) against
Hugging Face GPT2LMHeadModel (PyTorch CPU) holding the same weights, batched the way lm-evaluation-harness's
HFLM batches them (sorted by length, longest first, right-padded to the batch's longest row).

    python tests/benchmarks/eval_loglikelihood.py [--docs 64 --choices 4 --batch 16 --layers 4 --d_model 256 ...]

Requests imitate a few-shot multiple-choice task: per doc one prompt of random length in [ctx/4, ctx) tokens and
`--choices` continuations of 1-8 tokens. Both sides score every request (gptx deduplicates nothing here: all
requests differ). Each of `--repeats` timed repeats scores all requests; the sides alternate, medians are
reported, gptx's compilation is excluded (one untimed pass). Also checked: both sides agree to 1e-3 nats.
stdout gets exactly one JSON line.
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
    p.add_argument("--docs", type=int, default=64)
    p.add_argument("--choices", type=int, default=4)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--ctx", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--d_model", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--torch_threads", type=int, default=0, help="0: torch's default")
    return p.parse_args(argv)


def make_requests(args, rng) -> list[tuple[list[int], list[int]]]:
    out = []
    for _ in range(args.docs):
        ctx = rng.integers(0, args.vocab, int(rng.integers(args.ctx // 4, args.ctx - 8))).tolist()
        out += [(ctx, rng.integers(0, args.vocab, int(rng.integers(1, 9))).tolist()) for _ in range(args.choices)]
    return out


def hf_scores(model, requests, batch: int, torch) -> list[float]:
    """lm-eval HFLM-style: sort by total length (longest first), right-pad each batch, sum continuation log-probs."""
    order = sorted(range(len(requests)), key=lambda i: -(len(requests[i][0]) + len(requests[i][1])))
    out = [0.0] * len(requests)
    with torch.no_grad():
        for s in range(0, len(order), batch):
            idx = order[s : s + batch]
            rows = [(requests[i][0] + requests[i][1])[:-1] for i in idx]
            width = max(map(len, rows))
            x = torch.zeros((len(rows), width), dtype=torch.long)
            for r, row in enumerate(rows):
                x[r, : len(row)] = torch.as_tensor(row)
            logp = torch.log_softmax(model(x).logits.float(), -1)
            for r, i in enumerate(idx):
                n, cont = len(rows[r]), torch.as_tensor(requests[i][1])
                out[i] = float(logp[r, n - len(cont) : n].gather(-1, cont[:, None]).sum())
    return out


def main(argv=None) -> None:
    load = LoadWatch()
    args = parse_args(argv)
    import jax
    import torch
    import transformers

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
    from gptx.eval.requests import LM
    from gptx.interop import hf
    from gptx.models import GPT, GPTConfig

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    cfg = transformers.GPT2Config(
        vocab_size=args.vocab, n_positions=args.ctx, n_embd=args.d_model, n_layer=args.layers, n_head=args.heads,
        activation_function="gelu_new", bos_token_id=args.vocab - 1, eos_token_id=args.vocab - 1,
    )  # fmt: skip
    torch.manual_seed(0)
    ref = transformers.GPT2LMHeadModel(cfg).eval()
    weights = {k: v.numpy() for k, v in ref.state_dict().items()}
    m = hf.model_config_from_hf(cfg.to_dict())
    params = jax.tree.map(jax.numpy.asarray, hf.params_from_hf(weights, m))
    lm = LM(GPT(GPTConfig.from_config(m)), params, batch_size=args.batch, prefix_ids=[])
    requests = make_requests(args, np.random.default_rng(0))
    n_tokens = sum(len(c) + len(x) for c, x in requests)

    ours = [s.logprob for s in lm.loglikelihood_tokens(requests)]  # compiles every length bucket
    theirs = hf_scores(ref, requests, args.batch, torch)
    max_diff = float(np.max(np.abs(np.asarray(ours) - np.asarray(theirs))))
    times = {"gptx": [], "hf": []}
    for _ in range(args.repeats):
        t = time.perf_counter()
        lm.loglikelihood_tokens(requests)
        times["gptx"].append(time.perf_counter() - t)
        t = time.perf_counter()
        hf_scores(ref, requests, args.batch, torch)
        times["hf"].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        json.dumps(
            {
                "benchmark": "eval_loglikelihood",
                "requests": len(requests),
                "tokens": n_tokens,
                "gptx_requests_per_s": len(requests) / med["gptx"],
                "hf_torch_requests_per_s": len(requests) / med["hf"],
                "gptx_tokens_per_s": n_tokens / med["gptx"],
                "hf_torch_tokens_per_s": n_tokens / med["hf"],
                "ratio": med["hf"] / med["gptx"],
                "max_abs_logprob_diff": max_diff,
                "agree_1e-3": max_diff < 1e-3,
                "shapes": vars(args),
                "backend": jax.default_backend(),
                "torch_threads": torch.get_num_threads(),
                **load.fields(),
            }
        )
    )


if __name__ == "__main__":
    main()
