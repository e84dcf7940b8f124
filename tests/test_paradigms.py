"""The demo's `paradigms` stage: GPT-1 fine-tuning (from pretrained and from random init) and GPT-3 prompting of
one pretrained model, side by side on SST-2."""

import json
import re

import pytest
from conftest import SHARED_DATA, load_config, tiny_config

needs_sst2 = pytest.mark.skipif(
    not (SHARED_DATA / "sst2" / "dev.tsv").exists(), reason=f"SST-2 not found under {SHARED_DATA}/sst2"
)


def test_english_pretraining_is_a_valid_init_for_sst2_fine_tuning_and_never_sees_sst2_eval_text():
    from gptx import config

    english, sst2 = load_config("english"), load_config("finetune", "sst2")
    config.validate(english, 8)
    # finetune.init_from loads every GPT parameter by shape: the body must match, and the pretrained token table
    # cover the tokenizer, to which fine-tuning appends exactly the three tokens (start, delim, extract).
    for key in ("arch", "n_layer", "n_head", "d_model", "block_size"):
        assert english.model[key] == sst2.model[key], key
    assert english.model.vocab_size == english.tokenizer.vocab_size
    assert sst2.model.vocab_size == sst2.tokenizer.vocab_size + 3
    # GPT-3-style decontamination removes SST-2's evaluation sentences from the pretraining text.
    files = english.data_prep.decontam.task_files
    assert any(f.endswith("sst2/dev.tsv") for f in files) and any(f.endswith("sst2/test-labeled.tsv") for f in files)
    assert not any("sst2" in s["path"] for s in english.data_prep.sources)


@needs_sst2
def test_review_pretraining_reads_sst2_training_text_without_labels_and_never_its_eval_text():
    import csv

    from gptx.data import readers

    english = load_config("english", "reviews")
    assert set(english.data_prep.decontam.task_files) == set(load_config("english").data_prep.decontam.task_files)
    (src,) = [s for s in english.data_prep.sources if "sst2" in s["path"]]
    assert src["path"].endswith("sst2/train_full.tsv")  # the training split only
    records, _ = readers.read_source(readers.Source.from_dict({**src, "limit": 300}, "sst2_text"))
    path = readers.resolve_path(src["path"])
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[:300]
    # Each document is a training sentence as written, and no label is attached to it.
    assert [r["text"].strip() for r in records] == [row["sentence"].strip() for row in rows]
    assert not any(r["text"].rstrip().endswith(("\t0", "\t1")) for r in records)


@needs_sst2
@pytest.mark.slow
def test_paradigms_stage_reports_the_three_accuracies_on_the_same_dev_sentences(tmp_path, monkeypatch):
    from gptx import demo
    from gptx.demo import paradigms
    from gptx.train import pretrain

    # A seconds-sized stand-in for the demo's pretrain stage: WORKDIR/tokenizer.model and WORKDIR/pretrain.
    cfg = tiny_config()
    cfg.mesh.data = -1  # all simulated devices
    pretrain.train_tokenizer(cfg, str(tmp_path))
    run_cfg = cfg.copy_and_resolve_references()
    run_cfg.data.tokenizer = str(tmp_path / "tokenizer.model")
    pretrain.run(run_cfg, str(tmp_path / "pretrain"))
    for name, value in dict(FT_STEPS=3, FT_BATCH=8, DEV_LIMIT=24, SHOTS=1).items():
        monkeypatch.setattr(paradigms, name, value)

    demo.run(cfg, str(tmp_path), ["paradigms"])

    results = json.loads((tmp_path / paradigms.RESULTS).read_text())
    tuned, shot = results["finetune"], results["prompted"]
    # One table row per paradigm, each with the accuracy the runs measured, on the same 24 dev sentences.
    report = (tmp_path / "report.md").read_text()
    names = r"fine-tuned from pretrained|fine-tuned from random init|prompted \([\d.]+ demonstrations fit\)"
    rows = re.findall(rf"^\| ({names}) \| ([\d.]+) ± ([\d.]+) \| (\d+) \|$", report, re.M)
    assert [r[0].split(" (")[0] for r in rows] == [
        "fine-tuned from pretrained",
        "fine-tuned from random init",
        "prompted",
    ]
    measured = [tuned["pretrained"]["accuracy"], tuned["random"]["accuracy"], shot["acc"]]
    assert [float(r[1]) for r in rows] == pytest.approx(measured, abs=5e-4)
    assert [int(r[3]) for r in rows] == [24, 24, 24]
    # An accuracy over 24 sentences is a multiple of 1/24.
    assert all(abs(a * 24 - round(a * 24)) < 1e-6 for a in measured)
    # Same budget for both fine-tuning arms; only the initial weights differ.
    assert tuned["pretrained"]["steps"] == tuned["random"]["steps"] == 3
    runs = tmp_path / "paradigms"
    inits = [json.loads((runs / f"finetune_{a}" / "finetune_results.json").read_text())["init_from"] for a in
             ("pretrained", "random")]  # fmt: skip
    assert inits == [str(tmp_path / "pretrain"), "random"]
    assert (tmp_path / "report" / "paradigms.png").stat().st_size > 0
