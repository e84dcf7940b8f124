"""GPT-3-style data preparation over the shared corpora: curated text (Tiny Shakespeare, the KJV Bible, WordNet
glosses) and raw, duplicate-heavy text (fortunes, Debian copyright files and changelogs).

Usage:
  python -m gptx.main prepare --config=configs/data.py --workdir=/tmp/gptx_data          # everything (~1 min)
  python -m gptx.main prepare --config=configs/data.py:small --workdir=/tmp/gptx_data_s  # 2,000 docs per source
  python -m gptx.main train --config=configs/demo.py --config.data.corpus=/tmp/gptx_data --workdir=/tmp/run

Like GPT-3's mix (Table 2.2), sources are sampled by weight, not by size: the curated sets are seen more than
once per pass, the raw ones less. The raw sources train the quality classifier as negatives and are filtered
by its Pareto rule; the GPT-3 arithmetic and word-manipulation sets, LAMBADA and GSM8K are removed from the
training text by 13-gram decontamination (8-grams for the files of short examples).
"""

from gptx import config as gptx_config

DATA = "../shared/data"  # relative paths are taken from the repository root
GPT3_TASKS = (
    "two_digit_addition.jsonl",
    "three_digit_addition.jsonl",
    "four_digit_addition.jsonl",
    "five_digit_addition.jsonl",
    "six_digit_addition.jsonl",
    "two_digit_subtraction.jsonl",
    "two_digit_multiplication.jsonl",
    "single_digit_three_ops.jsonl",
    "sum_of_digits.jsonl",
    "cycle_letters_in_word.jsonl.gz",
    "mid_word_1_anagrams.jsonl.gz",
    "random_insertion_in_word.jsonl.gz",
    "reversed_words.jsonl.gz",
)


def sources(limit: int = 0) -> tuple[dict, ...]:
    corpora = f"{DATA}/corpora"
    return (
        (
            dict(
                name="shakespeare", path="bundled:tinyshakespeare", separator="blank_line", role="curated", weight=3.0
            ),
            dict(name="kjv", path=f"{corpora}/kjv_bible_verses.tsv.gz", text_field="text", role="curated", weight=2.0),
            dict(
                name="wordnet", path=f"{corpora}/wordnet_glosses.tsv.xz", text_field="gloss", role="curated", weight=1.0
            ),
            dict(name="fortunes", path=f"{corpora}/fortunes.jsonl", text_field="text", role="raw", weight=1.0),
            dict(name="debian", path=f"{corpora}/debian_docs.jsonl.gz", text_field="text", role="raw", weight=1.0),
        )
        if not limit
        else tuple({**s, "limit": limit} for s in sources())
    )


def get_config(arg: str = ""):
    if arg not in ("", "small"):
        raise ValueError(f"configs/data.py takes '' or 'small', got {arg!r}")
    c = gptx_config.default()
    p = c.data_prep
    p.sources = sources(2000 if arg == "small" else 0)
    p.val_fraction = 0.01
    p.shard_docs = 20_000
    p.dedup.update(ngram=5, num_perm=128, threshold=0.8)
    p.quality.update(hash_bits=20, pareto_alpha=9.0)
    p.mix.max_epochs = 3.0  # GPT-3's most repeated set (Wikipedia) was seen 3.4 times
    p.decontam.update(
        task_files=tuple(f"{DATA}/gpt3_tasks/{t}" for t in GPT3_TASKS)
        + (f"{DATA}/lambada/lambada_test.jsonl", f"{DATA}/gsm8k/test.jsonl"),
        ngram=13,
        min_ngram=8,
        mode="split",
    )
    return c
