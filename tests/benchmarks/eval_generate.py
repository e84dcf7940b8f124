"""Evaluation generation throughput: greedy `generate_until` requests answered by gptx.eval.requests.LM (JAX,
KV-cache decoder) against lm-evaluation-harness's Hugging Face backend (HFLM, PyTorch CPU) holding the same
random weights, with GPT-2's tokenizer (../shared/data/gpt2_tokenizer).

    python tests/benchmarks/eval_generate.py [--prompts 64 --max_new 32 --batch 16 --layers 4 --d_model 256 ...]

Prompts are the first lines of Tiny Shakespeare's speeches, cut to 8-64 tokens; every request generates until
"\\n\\n" or `--max_new` tokens (a random-weight model rarely stops early, so both sides generate about the full
length). Each of `--repeats` timed repeats answers all prompts; the sides alternate, medians are reported, gptx's
compilation is excluded (one untimed pass), and so is HFLM's first pass. Also reported: the fraction of
identical generations (greedy on the same weights; float32 rounding can flip a near tie). stdout gets exactly
one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

from machine import LoadWatch

REPO = os.path.join(os.path.dirname(__file__), "..", "..")
GPT2_TOKENIZER = os.path.join(REPO, "..", "shared", "data", "gpt2_tokenizer")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--max_new", type=int, default=32)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--ctx", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--d_model", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--repeats", type=int, default=5)
    return p.parse_args(argv)


def prompts(n: int, tok) -> list[str]:
    """First lines of the bundled corpus's speeches with 8..64 tokens."""
    from gptx.data import sources

    out = []
    for doc in sources.read_documents("bundled:tinyshakespeare"):
        ids = tok.encode(doc)
        if len(ids) >= 8:
            out.append(tok.decode(ids[:64]))
        if len(out) == n:
            break
    return out


def main(argv=None) -> None:
    load = LoadWatch()
    args = parse_args(argv)
    if not os.path.exists(os.path.join(GPT2_TOKENIZER, "vocab.json")):
        sys.exit(f"needs GPT-2's tokenizer files in {GPT2_TOKENIZER}")
    import jax
    import torch
    import transformers
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    sys.path.insert(0, REPO)
    from gptx.data import tokenizer as tokenizer_lib
    from gptx.eval.requests import LM
    from gptx.interop import hf
    from gptx.models import GPT, GPTConfig

    cfg = transformers.GPT2Config(
        vocab_size=50257, n_positions=args.ctx, n_embd=args.d_model, n_layer=args.layers, n_head=args.heads,
        activation_function="gelu_new", bos_token_id=50256, eos_token_id=50256,
    )  # fmt: skip
    torch.manual_seed(0)
    ref = transformers.GPT2LMHeadModel(cfg).eval()
    hf_tok = transformers.GPT2TokenizerFast.from_pretrained(GPT2_TOKENIZER)
    assert len(hf_tok) == 50257, "transformers built a one-token tokenizer (see the shared README)"
    hflm = HFLM(pretrained=ref, tokenizer=hf_tok, batch_size=args.batch, device="cpu", max_length=args.ctx)

    weights = {k: v.numpy() for k, v in ref.state_dict().items()}
    m = hf.model_config_from_hf(cfg.to_dict())
    tok = tokenizer_lib.load(GPT2_TOKENIZER)
    params = jax.tree.map(jax.numpy.asarray, hf.params_from_hf(weights, m))
    lm = LM(GPT(GPTConfig.from_config(m)), params, tok, batch_size=args.batch)

    texts = prompts(args.prompts, tok)
    until = ["\n\n"]
    kwargs = {"until": until, "max_gen_toks": args.max_new, "do_sample": False}
    instances = [Instance("generate_until", {}, (t, dict(kwargs)), i) for i, t in enumerate(texts)]

    def run_gptx():
        return lm.generate_until([(t, until) for t in texts], args.max_new)

    def run_hf():
        return hflm.generate_until(instances, disable_tqdm=True)

    ours, theirs = run_gptx(), run_hf()  # compiles every width bucket; warms PyTorch up
    times = {"gptx": [], "hf": []}
    for _ in range(args.repeats):
        for side, fn in (("gptx", run_gptx), ("hf", run_hf)):
            t = time.perf_counter()
            fn()
            times[side].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        json.dumps(
            {
                "benchmark": "eval_generate",
                "prompts": len(texts),
                "gptx_samples_per_s": len(texts) / med["gptx"],
                "lm_eval_hf_samples_per_s": len(texts) / med["hf"],
                "ratio": med["hf"] / med["gptx"],
                "identical_generations": sum(a == b for a, b in zip(ours, theirs, strict=True)) / len(texts),
                "shapes": vars(args),
                "backend": jax.default_backend(),
                "torch_threads": torch.get_num_threads(),
                **load.fields(),
            }
        )
    )


if __name__ == "__main__":
    main()
