"""The demo's `prepare` stage: GPT-3's data pipeline (normalise, filter, deduplicate, mix, shard) run by
`gptx.data.prepare` on the demo corpus, with its stage report in the demo report."""

from __future__ import annotations

import os

import ml_collections

from gptx.data import prepare as prepare_lib
from gptx.data import summary
from gptx.demo.report import Report


def prepare_config(cfg: ml_collections.ConfigDict, workdir: str) -> ml_collections.ConfigDict:
    """The demo config's data_prep section, writing to WORKDIR/prepared, with the demo corpus as the source
    when the config names none."""
    prep = ml_collections.ConfigDict(cfg.to_dict())
    if not prep.data_prep.sources:  # the demo corpus alone: no raw source to classify, no eval files to remove
        corpus = {"name": "corpus", "path": cfg.data.corpus, "separator": cfg.data.doc_separator}
        prep.data_prep.sources = (corpus,)
    prep.data_prep.update(output_dir=os.path.join(workdir, "prepared"), progress=False)
    return prep


def stage(cfg: ml_collections.ConfigDict, workdir: str, report: Report) -> None:
    """GPT-3's data pipeline (normalise, filter, deduplicate, mix, shard) on the demo corpus, with its report."""
    prep = prepare_config(cfg, workdir)
    result = prepare_lib.run(prep, prep.data_prep.output_dir)
    report.section(
        "prepare",
        "## 0. Data preparation (GPT-3 pipeline)\n\n"
        f"`gptx.main prepare` on {', '.join(s['name'] for s in prep.data_prep.sources)} in {result['seconds']:.1f} s: "
        f"{result['shards']['train_docs']:,} training and {result['shards']['val_docs']:,} validation documents "
        f"in ArrayRecord shards under `prepared/` (full report: `prepared/summary.md`, `prepared/report.json`). "
        "The pretraining below reads the corpus itself; `--config.data.corpus=WORKDIR/prepared` trains on the "
        "shards instead.\n\n" + summary.stage_table(result) + "\n" + summary.dedup_section(result),
    )
