"""Pretraining on modern English for GPT-1 transfer: fortunes (quotations, jokes, aphorisms) and WordNet glosses
(definitions of ~118k word senses, the adjectives among them saying what "good", "dull" or "charming" mean).

The demo model (configs/demo.py) learns Early Modern English verse from Tiny Shakespeare, which transfers badly
to lowercase movie-review sentences; this config keeps the demo model's body (4 layers, d 128) and reads other
text, with 8192 tokenizer pieces instead of 1024 so that most words are one token whose embedding pretraining
can shape (with 1024 pieces, fine-tuning from this pretraining lost to random init). SST-2's dev and test
sentences are removed from the pretraining text by 8-gram decontamination, as GPT-3 removes its benchmarks.

`configs/english.py:reviews` adds the text of SST-2's training split, without its labels, as a third source:
unlabelled in-domain text, the semi-supervised setting GPT-1 builds on.

Usage:
  python -m gptx.main prepare --config=configs/english.py:reviews --workdir=/tmp/gptx_english_data   # ~15 s
  python -m gptx.main train --config=configs/english.py:reviews --config.data.corpus=/tmp/gptx_english_data \
      --workdir=/tmp/gptx_english                                 # 1600 steps, ~18 min at ~1.5 steps/s on 2 cores
  python -m gptx.main finetune --config=configs/finetune.py:sst2 --config.finetune.init_from=/tmp/gptx_english \
      --config.data.tokenizer=/tmp/gptx_english/tokenizer.model --config.tokenizer.vocab_size=8192 \
      --config.model.vocab_size=8195 --workdir=/tmp/gptx_english_sst2
tests/benchmarks/finetune_sst2.py runs all of it and compares against random init.
"""

import importlib.util
import pathlib

DATA = "../shared/data"  # relative paths are taken from the repository root


def sources(reviews: bool = False) -> tuple[dict, ...]:
    corpora = f"{DATA}/corpora"
    general = (
        dict(name="fortunes", path=f"{corpora}/fortunes.jsonl", text_field="text", role="none", weight=1.0),
        dict(name="wordnet", path=f"{corpora}/wordnet_glosses.tsv.xz", text_field="gloss", role="none", weight=1.0),
    )
    if not reviews:
        return general
    # Unlabelled in-domain text: the 67k phrases of SST-2's training split, read by their "sentence" column
    # only (the label column is never read). Pretraining a language model on unlabelled text of the target
    # domain is the semi-supervised recipe GPT-1 builds on (Dai & Le 2015); dev and test stay out (decontam).
    sst2 = dict(name="sst2_text", path=f"{DATA}/sst2/train_full.tsv", text_field="sentence", role="none", weight=1.0)
    return (*general, sst2)


def _demo_config():
    spec = importlib.util.spec_from_file_location("configs_demo", pathlib.Path(__file__).with_name("demo.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def get_config(arg: str = ""):
    """arg "" (general text) or "reviews" (general text plus SST-2's training sentences without labels)."""
    if arg not in ("", "reviews"):
        raise ValueError(f"configs/english.py takes '' or 'reviews', got {arg!r}")
    # The demo model's body and optimizer, so that a finished run is a valid config.finetune.init_from for
    # configs/finetune.py (with its vocabulary set to 8192 + 3); the text, vocabulary and schedule differ.
    c = _demo_config()
    c.model.name = "english"
    c.data.update(corpus="", doc_separator="blank_line", val_fraction=0.02)
    c.tokenizer.vocab_size = c.model.vocab_size = 8192
    c.train.update(steps=1600, log_every=20, eval_every=400, ckpt_every=400)
    p = c.data_prep
    p.sources = sources(reviews=arg == "reviews")
    p.val_fraction = 0.01
    p.shard_docs = 50_000
    p.quality.enabled = False  # both sources are kept whole; there is no raw web text to filter
    p.decontam.update(
        task_files=(f"{DATA}/sst2/dev.tsv", f"{DATA}/sst2/test-labeled.tsv"),
        ngram=13,
        min_ngram=8,
        mode="drop",
    )
    return c
