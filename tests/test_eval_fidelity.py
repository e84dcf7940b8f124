"""Scores comparable to published ones: HellaSwag contexts preprocessed as lm-evaluation-harness does (its own
`process_docs` is the reference), and a `shakespeare_lastword` whose distractors no word-frequency rule can tell
from the answer, so the demo's few-shot curve starts from chance."""

from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_DATA

from gptx.eval import filters, harness, taskfile
from gptx.eval import tasks as T

HELLASWAG = taskfile.get("hellaswag").test

# HellaSwag records as the JSON holds them: ActivityNet (ctx_b the start of the last sentence) and WikiHow
# (bracketed tags, often an empty ctx_b)
RAW = [
    {"activity_label": "Roof shingle removal", "ctx_a": "A man is sitting on a roof.", "ctx_b": "he",
     "endings": ["is using wrap.", "is ripping level tiles off.", "holds a cube.", "starts pulling up roofing."]},
    {"activity_label": "Clean and jerk", "ctx_a": "A lady walks to a barbell. She bends down and grabs the pole.",
     "ctx_b": "the lady from NASA", "endings": ["swings.", "pulls the barbell.", "pulls a rope.", "lifts it."]},
    {"activity_label": "Home and Garden", "ctx_a": "[header] How to grow tomatoes [title] Pick a sunny spot. [step] "
     "Tomatoes need light.", "ctx_b": "", "endings": ["[substeps] Water them.", "Eat [title] them.", "Sing.", "Go."]},
    {"activity_label": "Cooking", "ctx_a": "Someone cuts onions!", "ctx_b": "then they",
     "endings": ["cry.", "laugh.", "sing.", "leave."]},
]  # fmt: skip


def as_file_line(raw: dict) -> str:
    """The shared file's context line: activity_label + ": " + ctx (HellaSwag's ctx = ctx_a + " " + ctx_b)."""
    ctx = raw["ctx_a"] + (" " + raw["ctx_b"] if raw["ctx_b"] else "")
    return raw["activity_label"] + ": " + ctx


def test_hellaswag_preprocessing_equals_lm_evals():
    """The hellaswag task file's templates render lm-eval's processed query and choices from the file's layout."""
    datasets = pytest.importorskip("datasets")
    utils = pytest.importorskip("lm_eval.tasks.hellaswag.utils")
    theirs = utils.process_docs(datasets.Dataset.from_list([{**r, "label": "0"} for r in RAW]))
    task = taskfile.get("hellaswag")
    for raw, ref in zip(RAW, theirs, strict=True):
        doc = {"context": as_file_line(raw), "endings": raw["endings"], "label": 0}
        assert task.render_context(doc) == ref["query"]
        assert task.choice_texts(doc) == ref["choices"]
    assert (
        filters.capitalize_ctx_b("Clean: She grabs the pole. the lady from NASA")
        == "Clean: She grabs the pole. The lady from nasa"
    )


@pytest.mark.skipif(not (SHARED_DATA / HELLASWAG).exists(), reason="HellaSwag not in shared data")
def test_a_third_of_the_hellaswag_contexts_get_their_ctx_b_capitalised():
    docs = T.READERS["hellaswag"](str(SHARED_DATA / HELLASWAG)).docs
    changed = sum(filters.capitalize_ctx_b(d["context"]) != d["context"] for d in docs)
    assert len(docs) == 10042 and changed == 3236


def test_shakespeare_lastword_distractors_defeat_a_word_frequency_baseline():
    data = harness.load_task(taskfile.get("shakespeare_lastword"), "")
    docs = [d for _, d in data.docs]
    n = len(docs)
    assert n > 500
    for d in docs:
        assert len({c.lower() for c in d["choices"]}) == 4 and d["choices"][d["label"]] == d["last"]
    se = np.sqrt(0.25 * 0.75 / n)  # a binomial standard error at chance
    # Picking the most (or the least) frequent word in training text, without the context, is chance.
    assert abs(T.frequency_baseline(docs) - 0.25) < 3 * se
    least = np.mean([int(np.argmin(d["choice_counts"])) == d["label"] for d in docs])
    assert abs(least - 0.25) < 3 * se
    # The answer's frequency rank among its choices is uniform (no rank rule beats chance either).
    ranks = [sorted(d["choice_counts"], reverse=True).index(d["choice_counts"][d["label"]]) for d in docs]
    assert all(abs(c / n - 0.25) < 4 * se for c in np.bincount(ranks, minlength=4))
    # And the distractors are of about the answer's frequency: within a factor of 3 for most docs.
    ratios = [max(d["choice_counts"]) / max(1, min(d["choice_counts"])) for d in docs]
    assert np.median(ratios) < 3


@pytest.mark.skipif(not (SHARED_DATA / "rte" / "dev.tsv").exists(), reason="GLUE files not in shared data")
@pytest.mark.parametrize(("name", "labels"), [("sst2", None), ("rte", ("entailment", "not_entailment"))])
def test_glue_prompts_are_lm_evals_templates(name, labels):
    """SST-2 and RTE render lm-eval's own glue templates (its YAML, on the sentences stripped) with its choices and
    Hugging Face's integer labels, and GLUE's quote characters stay text."""
    lm_eval = pytest.importorskip("lm_eval")
    yaml = pytest.importorskip("yaml")
    from lm_eval.utils import apply_template

    ref = yaml.safe_load((Path(lm_eval.__file__).parent / "tasks" / "glue" / name / "default.yaml").read_text())
    task = taskfile.get(name)
    data = harness.load_task(task, str(SHARED_DATA))
    for _, doc in data.docs:
        hf = {k: v.strip() if isinstance(v, str) else v for k, v in doc.items()}
        hf["label"] = labels.index(doc["label"]) if labels else doc["label"]
        assert task.render_context(doc) == apply_template(ref["doc_to_text"], hf)
        assert task.choice_texts(doc) == ref["doc_to_choice"] and task.gold_index(doc) == hf["label"]
    assert any('"' in task.render_context(d) for _, d in data.docs) == (name == "rte")
