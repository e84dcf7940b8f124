"""Pretraining on modern English for GPT-1 transfer: fortunes (quotations, jokes, aphorisms) and WordNet glosses
(definitions of ~118k word senses, the adjectives among them saying what "good", "dull" or "charming" mean).

The demo model (configs/demo.py) learns Early Modern English verse from Tiny Shakespeare, which transfers badly
to lowercase movie-review sentences; this config keeps the demo model's shape (so configs/finetune.py fine-tunes
it as is) and changes only the text it reads and for how long. SST-2's dev and test sentences are removed from
the pretraining text by 8-gram decontamination, as GPT-3 removes its benchmarks.

Usage:
  python -m gptx.main prepare --config=configs/english.py --workdir=/tmp/gptx_english_data   # ~30 s
  python -m gptx.main train --config=configs/english.py --config.data.corpus=/tmp/gptx_english_data \
      --workdir=/tmp/gptx_english                                       # 800 steps, ~14 min at ~1 step/s
  python -m gptx.main finetune --config=configs/finetune.py:sst2 --config.finetune.init_from=/tmp/gptx_english \
      --workdir=/tmp/gptx_english_sst2
tests/benchmarks/finetune_sst2.py runs all of it and compares against random init.
"""

import importlib.util
import pathlib

DATA = "../shared/data"  # relative paths are taken from the repository root


def sources() -> tuple[dict, ...]:
    corpora = f"{DATA}/corpora"
    return (
        dict(name="fortunes", path=f"{corpora}/fortunes.jsonl", text_field="text", role="none", weight=1.0),
        dict(name="wordnet", path=f"{corpora}/wordnet_glosses.tsv.xz", text_field="gloss", role="none", weight=1.0),
    )


def _demo_config():
    spec = importlib.util.spec_from_file_location("configs_demo", pathlib.Path(__file__).with_name("demo.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def get_config(arg: str = ""):
    # The demo model's shape and optimizer, so that a finished run is a valid config.finetune.init_from for
    # configs/finetune.py; only the text and the schedule differ.
    c = _demo_config()
    c.model.name = "english"
    c.data.update(corpus="", doc_separator="blank_line", val_fraction=0.02)
    c.train.update(steps=800, log_every=20, eval_every=200, ckpt_every=400)
    p = c.data_prep
    p.sources = sources()
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
