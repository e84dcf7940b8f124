"""A task is a file: a StoryCloze-style CSV task written as YAML alone scores what lm-evaluation-harness scores
with the same template on the same model (0-shot and 2-shot); every data format reads the same records;
malformed records are reported with file and line; groups expand; a wrong key names the file and the key."""

import bz2
import csv
import gzip
import io
import json
import logging
import lzma

import pytest
from conftest import SHARED_DATA, load_config

from gptx.config import ConfigError
from gptx.data.sources import DataError
from gptx.eval import command, harness, records, taskfile
from gptx.eval import tasks as T

HEADER = [
    "InputStoryid", "InputSentence1", "InputSentence2", "InputSentence3", "InputSentence4",
    "RandomFifthSentenceQuiz1", "RandomFifthSentenceQuiz2", "AnswerRightEnding",
]  # fmt: skip
# Hand-written five-sentence stories in StoryCloze's layout: four sentences, two endings, the right one's number.
STORIES = [
    ("Tom wanted a dog.", "He saved money all summer.", "In August he went to the shelter.",
     "He met a shy brown puppy.", "Tom took the puppy home.", "Tom bought a new car instead.", 1),
    ("Ana baked bread every Sunday.", "This week she ran out of flour.", "The shop was closed.",
     "Her neighbour offered some.", "Ana threw the oven away.", "Ana baked her bread after all.", 2),
    ("The team had lost every game.", "Their coach changed the training.", "They practised each morning.",
     "In the final match they played well.", "They won for the first time.", "They forgot how to run.", 1),
    ("Lee planted tomatoes in May.", "He watered them daily.", "The summer was hot.",
     "By August the plants were heavy with fruit.", "Lee stopped liking gardens.", "Lee picked a basket of tomatoes.",
     2),
    ("Mia lost her keys.", "She searched the whole flat.", "She called her sister.",
     "Her sister had borrowed them.", "Mia got her keys back.", "Mia moved to the moon.", 1),
    ("The old bridge was closing.", "The town planned a new one.", "Builders worked for a year.",
     "At last the new bridge opened.", "Cars crossed the river again.", "The river turned into sand.", 1),
    ("Sam entered a spelling contest.", "He studied lists of words.", "On the day he felt calm.",
     "The last word was difficult.", "Sam ate the trophy.", "Sam spelled it right and won.", 2),
    ("Rain fell all night.", "The street flooded by morning.", "Schools were closed.",
     "Children played in the water.", "The sun dried the streets by evening.", "It snowed fire.", 1),
]  # fmt: skip
TEXT = "{{[InputSentence1, InputSentence2, InputSentence3, InputSentence4] | join(' ')}}"
CHOICES = "{{[RandomFifthSentenceQuiz1, RandomFifthSentenceQuiz2]}}"
TARGET = "{{AnswerRightEnding - 1}}"


def write_csv(path, stories) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(HEADER)
        for i, s in enumerate(stories):
            w.writerow([f"id{i}", *s])


def storycloze_files(tmp_path) -> tuple[str, str]:
    """(our task file, lm-eval's task folder) over test.csv (6 stories) and val.csv (2 demonstrations)."""
    write_csv(tmp_path / "test.csv", STORIES[:6])
    write_csv(tmp_path / "val.csv", STORIES[6:])
    (tmp_path / "storycloze_mini.yaml").write_text(
        f"task: storycloze_mini\noutput_type: multiple_choice\ntest: test.csv\nfewshot: val.csv\n"
        f'doc_to_text: "{TEXT}"\ndoc_to_choice: "{CHOICES}"\ndoc_to_target: "{TARGET}"\n'
        "fewshot_config: {sampler: first_n}\nmetric_list: [acc, acc_norm]\n"
    )
    lm_eval_dir = tmp_path / "lm_eval_tasks"
    lm_eval_dir.mkdir()
    (lm_eval_dir / "storycloze_ref.yaml").write_text(
        "task: storycloze_ref\ndataset_path: csv\ndataset_kwargs:\n  data_files:\n"
        f"    test: {tmp_path / 'test.csv'}\n    validation: {tmp_path / 'val.csv'}\n"
        "output_type: multiple_choice\ntest_split: test\nfewshot_split: validation\n"
        "fewshot_config:\n  sampler: first_n\n"
        f'doc_to_text: "{TEXT}"\ndoc_to_choice: "{CHOICES}"\ndoc_to_target: "{TARGET}"\n'
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\n"
    )
    return str(tmp_path / "storycloze_mini.yaml"), str(lm_eval_dir)


def test_the_story_cloze_file_renders_as_lm_eval_would(tmp_path):
    path, _ = storycloze_files(tmp_path)
    (task,) = taskfile.resolve(path)
    data = harness.load_task(task, "")
    doc = data.docs[1][1]
    assert task.render_context(doc) == " ".join(STORIES[1][:4])
    assert task.choice_texts(doc) == list(STORIES[1][4:6]) and task.gold_index(doc) == 1
    prompt = harness.make_prompts(task, data.docs[:1], data.pool, 2, 0, data.same_file)[0]
    first, second = (" ".join(s[:4]) + " " + s[4 + s[6] - 1] for s in STORIES[6:])
    assert prompt.text == f"{first}\n\n{second}\n\n" + " ".join(STORIES[0][:4])  # the first 2, in file order


@pytest.mark.slow
def test_a_csv_task_file_scores_as_lm_eval_on_gpt2(tmp_path, monkeypatch):
    """acc and acc_norm of the task file through `eval` equal lm-eval's on the same random-weight GPT-2."""
    pytest.importorskip("accelerate")
    import lm_eval
    from lm_eval.tasks import TaskManager

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    path, lm_eval_dir = storycloze_files(tmp_path)
    if not (SHARED_DATA / "gpt2_tokenizer" / "vocab.json").exists():
        pytest.skip("GPT-2's tokenizer is not in the shared data sets")
    lm, ref = _gpt2(tmp_path)
    cfg = load_config("eval", "gpt2:124m")
    cfg.eval.update(tasks=path, shots="0,2")
    ours = command.evaluate(cfg, lm)["results"]["storycloze_mini"]
    (task,) = taskfile.resolve(path)
    data = harness.load_task(task, "")
    for k in (0, 2):
        run = lm_eval.simple_evaluate(
            model=ref, tasks=["storycloze_ref"], num_fewshot=k, log_samples=True,
            task_manager=TaskManager(include_path=lm_eval_dir, include_defaults=False),
        )  # fmt: skip
        theirs = run["results"]["storycloze_ref"]
        assert (ours[k]["acc"], ours[k]["acc_norm"]) == (theirs["acc,none"], theirs["acc_norm,none"]), k
        assert ours[k]["mean_shots"] == k
        # The same prompts (lm-eval moves a context's trailing whitespace into the continuation, as gptx does).
        prompts = harness.make_prompts(task, data.docs, data.pool, k, 0, data.same_file)
        samples = sorted(run["samples"]["storycloze_ref"], key=lambda x: x["doc_id"])
        assert [x["arguments"][0][0] for x in samples] == [p.text for p in prompts]


def _gpt2(tmp_path):
    """(gptx LM, lm-eval HFLM) of one random-weight GPT-2, as tests/test_eval_gpt2.py builds them."""
    import torch
    import transformers
    from lm_eval.models.huggingface import HFLM
    from test_interop import hf_model, save

    from gptx.data import tokenizer as tokenizer_lib
    from gptx.interop import workdir as convert

    torch.set_num_threads(1)
    tok_dir = SHARED_DATA / "gpt2_tokenizer"
    model = hf_model("gpt2", n_positions=128)
    save(model, tmp_path / "hf")
    hf_tok = transformers.GPT2TokenizerFast.from_pretrained(str(tok_dir))
    hf_tok.save_pretrained(str(tmp_path / "hf"))
    cfg = load_config("eval", "gpt2:124m")
    cfg.mesh.update(data=-1, fsdp=1, tensor=1)
    cfg, _ = convert.import_checkpoint(cfg, str(tmp_path / "hf"), str(tmp_path / "workdir"))
    if tokenizer_lib.find(str(tmp_path / "workdir")) is None:
        cfg.data.tokenizer = str(tok_dir)
    lm = command.load_lm(cfg, str(tmp_path / "workdir"))
    return lm, HFLM(pretrained=model, tokenizer=hf_tok, batch_size=8, device="cpu")


# Formats and malformed records -------------------------------------------------------------------------------

ROWS = [{"q": "one plus one", "a": 2}, {"q": 'two, plus "two"', "a": 4}, {"q": "three", "a": 3}]


def write_all_formats(tmp_path) -> dict[str, str]:
    text = {
        "jsonl": "".join(json.dumps(r) + "\n" for r in ROWS),
        "json": json.dumps(ROWS),
        "csv": _table(","),
        "tsv": _table("\t"),
    }
    out = {}
    for fmt, body in text.items():
        for suffix, opener in (("", open), (".gz", gzip.open), (".xz", lzma.open), (".bz2", bz2.open)):
            path = tmp_path / f"data.{fmt}{suffix}"
            with opener(path, "wt", encoding="utf-8") as f:
                f.write(body)
            out[f"{fmt}{suffix}"] = str(path)
    return out


def _table(delimiter: str) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, ["q", "a"], delimiter=delimiter)
    w.writeheader()
    w.writerows(ROWS)
    return buf.getvalue()


def test_every_format_and_compression_reads_the_same_records(tmp_path):
    for name, path in write_all_formats(tmp_path).items():
        assert records.read(path).docs == ROWS, name
    (tmp_path / "lines.txt.xz").write_bytes(lzma.compress(b"first line\n\nsecond line\n"))
    text = records.read(str(tmp_path / "lines.txt.xz"))
    assert text.docs == [{"text": "first line"}, {"text": "second line"}] and text.lines == [1, 3]


def test_malformed_records_are_reported_with_file_and_line(tmp_path, caplog):
    (tmp_path / "qa.csv").write_text('q,a\none,1\ntwo,2,extra\n"three\nspans lines",3\nfour\nfive,5\n')
    (tmp_path / "qa.yaml").write_text(
        "task: qa\noutput_type: loglikelihood\ntest: qa.csv\ndoc_to_text: '{{q}} ='\ndoc_to_target: '{{a}}'\n"
    )
    (tmp_path / "bad.jsonl").write_text('{"q": "x", "a": 1}\nnot json\n{"q": "y"}\n{"q": "z", "a": 2}\n')
    (tmp_path / "bad.yaml").write_text(
        "task: bad\noutput_type: loglikelihood\ntest: bad.jsonl\ndoc_to_text: q\ndoc_to_target: '{{a}}'\n"
    )
    cfg = load_config("eval")
    cfg.eval.tasks = f"{tmp_path / 'qa.yaml'},{tmp_path / 'bad.yaml'}"
    tasks = command.resolve_tasks(cfg)
    qa, bad = (harness.load_task(t, "") for t in tasks)
    assert [d["q"] for _, d in qa.docs] == ["one", "three\nspans lines", "five"]
    assert qa.malformed_lines == {str(tmp_path / "qa.csv"): [3, 6]}  # the wrong cell counts, by file line
    assert bad.malformed_lines == {str(tmp_path / "bad.jsonl"): [2, 3]}  # bad JSON; `a` missing for the template
    lm = _FixedLM()
    with caplog.at_level(logging.WARNING):
        out = command.evaluate(cfg, lm)
    assert out["tasks"]["qa"]["malformed_lines"] == {str(tmp_path / "qa.csv"): [3, 6]}
    assert f"{tmp_path / 'qa.csv'}:3, {tmp_path / 'qa.csv'}:6" in caplog.text


class _FixedLM:
    """An LM stub: every continuation has log-likelihood -1 and is greedy (the scores are not the point here)."""

    max_len = 64

    def count_tokens(self, text):
        return len(text.split())

    def loglikelihood(self, requests):
        from gptx.eval.requests import Loglikelihood

        return [Loglikelihood(-1.0, True, 1) for _ in requests]


def test_groups_expand_to_their_tasks(tmp_path):
    cfg = load_config("eval")
    cfg.eval.tasks = "gpt3_arithmetic"
    assert command.task_names(cfg) == [
        f"{n}_digit_{op}" for n in ("two", "three", "four", "five", "six") for op in ("addition", "subtraction")
    ] + ["two_digit_multiplication", "single_digit_three_ops", "sum_of_digits"]  # Table 3.9's 13 sets, in order
    (tmp_path / "mine.yaml").write_text("group: mine\ntask: [lambada, qa.yaml, two_digit_addition, lambada]\n")
    (tmp_path / "qa.yaml").write_text("task: qa\noutput_type: loglikelihood\ntest: qa.csv\n")
    cfg.eval.tasks = f"{tmp_path / 'mine.yaml'},hellaswag,humaneval_mini"
    assert command.task_names(cfg) == ["lambada", "qa", "two_digit_addition", "hellaswag", "humaneval_mini"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("task: x\noutput_type: multiple_choice\ntest: t.csv\ndoc_to_txt: q\n", r"unknown key\(s\) \['doc_to_txt'\]"),
        ("task: x\noutput_type: multiple_choice\n", "missing key `test`"),
        ("task: x\noutput_type: choose\ntest: t.csv\n", "kind 'choose' is not one of"),
        ("task: x\noutput_type: generate_until\ntest: t.csv\ngeneration_kwargs: {stop: [a]}\n", r"\['stop'\]"),
        ("- just\n- a list\n", "a task file is a mapping"),
        ("task: x\noutput_type: multiple_choice\ntest: t.xml\nformat: xml\n", "unknown format 'xml'; formats: jsonl"),
        ("task: x\noutput_type: multiple_choice\ntest: t.tsv\nquoting: all\n", "quoting 'all' is not one of"),
    ],
)
def test_a_wrong_task_file_names_the_file_and_the_key(tmp_path, body, message):
    path = tmp_path / "t.yaml"
    path.write_text(body)
    with pytest.raises(DataError, match=message) as e:
        taskfile.resolve(str(path))
    assert str(path) in str(e.value)
    cfg = load_config("eval")
    cfg.eval.tasks = str(path)
    with pytest.raises(ConfigError, match="config.eval.tasks"):
        command.validate_eval(cfg)


def test_every_builtin_task_is_a_task_file_that_loads():
    files = taskfile.builtin_files()
    names = {"hellaswag", "sst2", "rte", "snli", "mnli", "tinyshakespeare", "shakespeare_lastword", "lambada", "gsm8k"}
    assert names | {"humaneval_mini", "mbpp_mini", "gpt3_arithmetic"} <= set(files)
    for name, path in files.items():
        assert all(t.syntax == "jinja" for t in taskfile.resolve(name)), path  # read from the file, not code
    assert taskfile.get("humaneval_mini").kind == T.CODE


@pytest.mark.parametrize(
    "template",
    ["{{q | regex_replace('a+', '_')}}", "{{q | regex_replace('a+', '_', 1) | trim}}", "{{[q, q | upper]}}"],
)
def test_templates_render_as_lm_evals_environment(template):
    lm_eval_utils = pytest.importorskip("lm_eval.utils")
    from gptx.eval import templates

    doc = {"q": " caab baaad a "}
    assert templates.render(template, doc) == lm_eval_utils.apply_template(template, doc)
