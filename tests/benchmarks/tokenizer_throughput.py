"""Tokenizer throughput: GPT-2's byte-level BPE through gptx (`Tokenizer.encode_batch`) against transformers'
GPT2TokenizerFast (its batched `__call__`, the normal way), both loaded from ../shared/data/gpt2_tokenizer, on
the shared pretraining corpora.

    python tests/benchmarks/tokenizer_throughput.py [--repeats 5 --limit 0 --chunk 4096]

Texts: every document of corpora/debian_docs.jsonl.gz, fortunes.jsonl, kjv_bible_verses.tsv.gz,
wordnet_glosses.tsv.xz and tinyshakespeare/input.txt (paragraphs), read with gptx's source readers
(`--limit N`: the first N documents of each). Both sides encode the same texts in the same chunks of `--chunk`
documents (a data loader's batch; `--chunk 0`: one call for all), neither adding special tokens (GPT-2 has no
post-processor), and return lists of ids. The sides alternate `--repeats` times (the machine may be shared)
and medians are reported; `ids_identical` compares every id of the two outputs. The goal is a ratio >= 1.
stdout gets exactly one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

from gptx.data import readers  # noqa: E402
from gptx.data import tokenizer as tokenizer_lib  # noqa: E402

SHARED = os.path.join(REPO, "..", "shared", "data")
GPT2_DIR = os.path.join(SHARED, "gpt2_tokenizer")
CORPORA = (
    ("debian_docs", "corpora/debian_docs.jsonl.gz", "text"),
    ("fortunes", "corpora/fortunes.jsonl", "text"),
    ("kjv_bible", "corpora/kjv_bible_verses.tsv.gz", "text"),
    ("wordnet_glosses", "corpora/wordnet_glosses.tsv.xz", "gloss"),
    ("tinyshakespeare", "tinyshakespeare/input.txt", ""),
)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def load_texts(limit: int) -> tuple[list[str], dict[str, int]]:
    """Documents of every shared corpus (the first `limit` of each when > 0) and the count per corpus."""
    texts, counts = [], {}
    for name, rel, field in CORPORA:
        records, _ = readers.read_source(readers.Source(name, os.path.join(SHARED, rel), text_field=field, limit=limit))
        texts += [r["text"] for r in records]
        counts[name] = len(records)
    return texts, counts


def chunks(texts: list[str], size: int) -> list[list[str]]:
    size = size or len(texts)
    return [texts[i : i + size] for i in range(0, len(texts), size)]


def timed(encode, batches: list[list[str]]) -> tuple[float, list[list[int]]]:
    """Seconds to encode every batch, and the ids."""
    t0 = time.perf_counter()
    out = [ids for batch in batches for ids in encode(batch)]
    return time.perf_counter() - t0, out


def main(argv=None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--limit", type=int, default=0, help="documents per corpus (0 = all)")
    p.add_argument("--chunk", type=int, default=4096, help="documents per encode call (0 = all in one call)")
    args = p.parse_args(argv)

    import tokenizers
    import transformers

    texts, counts = load_texts(args.limit)
    batches = chunks(texts, args.chunk)
    n_chars = sum(map(len, texts))
    log(f"{len(texts):,} documents, {n_chars:,} characters: {counts}")

    gptx_tok = tokenizer_lib.load(GPT2_DIR)
    hf_tok = transformers.GPT2TokenizerFast.from_pretrained(GPT2_DIR)
    if len(hf_tok) != 50257:  # transformers 5.x can build a one-token GPT-2 tokenizer from the wrong arguments
        raise SystemExit(f"GPT2TokenizerFast from {GPT2_DIR} has {len(hf_tok)} tokens, not 50257")

    sides = {
        "gptx": gptx_tok.encode_batch,
        "transformers": lambda batch: hf_tok(batch)["input_ids"],  # GPT-2 adds no special tokens
    }
    for encode in sides.values():  # warm-up: thread pools, caches
        encode(batches[0])
    rates: dict[str, list[float]] = {name: [] for name in sides}
    outputs: dict[str, list[list[int]]] = {}
    for r in range(args.repeats):
        for name, encode in sides.items():
            seconds, ids = timed(encode, batches)
            n_tokens = sum(map(len, ids))
            rates[name].append(n_tokens / seconds)
            outputs[name] = ids
        log(f"repeat {r + 1}: " + ", ".join(f"{k} {v[-1]:,.0f} tokens/s" for k, v in rates.items()))
    gptx_tps, hf_tps = statistics.median(rates["gptx"]), statistics.median(rates["transformers"])
    print(
        json.dumps(
            {
                "benchmark": "tokenizer_throughput",
                "tokenizer": "GPT-2 byte-level BPE (../shared/data/gpt2_tokenizer)",
                "documents": len(texts),
                "documents_per_corpus": counts,
                "characters": n_chars,
                "tokens": sum(map(len, outputs["gptx"])),
                "chunk": args.chunk,
                "repeats": args.repeats,
                "gptx_tokens_per_s": round(gptx_tps),
                "transformers_tokens_per_s": round(hf_tps),
                "ratio": round(gptx_tps / hf_tps, 3),
                # Paired ratios of each repeat (the two sides ran back to back): robust to load that comes and goes.
                "ratio_per_repeat": [round(a / b, 3) for a, b in zip(*rates.values(), strict=True)],
                "goal_ratio": 1.0,
                "ids_identical": outputs["gptx"] == outputs["transformers"],
                "gptx_tokens_per_s_all": [round(x) for x in rates["gptx"]],
                "transformers_tokens_per_s_all": [round(x) for x in rates["transformers"]],
                "cpus": os.cpu_count(),
                "tokenizers": tokenizers.__version__,
                "transformers": transformers.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
