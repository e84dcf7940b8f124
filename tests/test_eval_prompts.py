"""Few-shot prompts, task entries and metrics of the harness, checked by hand and against the data files."""

import math

import pytest
from conftest import SHARED_DATA

from gptx.data.sources import DataError
from gptx.eval import harness, taskfile
from gptx.eval import metrics as M
from gptx.eval import tasks as T

needs_data = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"shared data sets not found at {SHARED_DATA}")


def qa_task(**kw) -> T.Task:
    return T.Task("qa", T.COMPLETION, "unused", "jsonl", context="Q: {q}\nA:", target="{a}", **kw)


def qa_docs(n: int, duplicates: int = 0) -> list[dict]:
    docs = [{"q": f"what is {i} plus one?", "a": str(i + 1)} for i in range(n)]
    return docs + [dict(docs[i]) for i in range(duplicates)]  # exact copies at the end of the file


def test_fewshot_prompts_never_contain_the_test_example_even_when_the_file_repeats_it():
    task = qa_task(description="Add one.\n\n")
    docs = qa_docs(12, duplicates=4)
    data = harness.TaskData(task, list(enumerate(docs)), docs, True, {})
    for k in (1, 4, 11):
        for (i, doc), prompt in zip(data.docs, harness.make_prompts(task, data.docs, docs, k, 0, True), strict=True):
            question = task.render_context(doc)
            assert prompt.text.startswith("Add one.\n\n") and prompt.text.endswith(question)
            assert prompt.text.count(question) == 1, (k, i, prompt.text)  # only as the question being asked
            assert i not in prompt.demos
            assert len(prompt.demos) == min(k, 16 - 2 if i < 4 or i >= 12 else 15)
    # Demonstrations from a separate file: a copy of the test question there is skipped too.
    pool = qa_docs(3) + [{"q": "what is 7 plus one?", "a": "8"}]
    (p,) = harness.make_prompts(task, [(0, {"q": "what is 7 plus one?", "a": "8"})], pool, 4, 0, False)
    assert len(p.demos) == 3 and p.text.count("what is 7 plus one?") == 1


def test_the_same_seed_gives_the_same_prompts_whatever_the_other_docs():
    task = qa_task()
    docs = qa_docs(50)
    every = list(enumerate(docs))
    a = harness.make_prompts(task, every, docs, 3, seed=1, same_file=True)
    b = harness.make_prompts(task, every, docs, 3, seed=1, same_file=True)
    c = harness.make_prompts(task, every, docs, 3, seed=2, same_file=True)
    assert a == b and a != c
    # A doc's prompt does not depend on which other docs are evaluated (limit, order).
    assert harness.make_prompts(task, every[7:9][::-1], docs, 3, 1, True) == [a[8], a[7]]
    # K-shot demonstrations extend the (K-1)-shot ones, so a curve over K adds examples rather than swapping them.
    two = harness.make_prompts(task, every, docs, 2, seed=1, same_file=True)
    assert all(p3.demos[:2] == p2.demos for p2, p3 in zip(two, a, strict=True))
    # And the layout: demonstrations joined by the few-shot delimiter, answers after the target delimiter.
    d1, d2, d3 = (docs[j] for j in a[0].demos)
    assert (
        a[0].text == "\n\n".join(f"Q: {d['q']}\nA: {d['a']}" for d in (d1, d2, d3)) + "\n\nQ: what is 0 plus one?\nA:"
    )


def test_demonstrations_are_dropped_from_the_front_until_the_prompt_fits():
    task = qa_task()
    docs = qa_docs(20)
    fits = lambda text, doc: text.count("\n\n") <= 2  # at most 2 demonstrations "fit"
    (p,) = harness.make_prompts(task, [(0, docs[0])], docs, 6, 0, True, fits)
    (full,) = harness.make_prompts(task, [(0, docs[0])], docs, 6, 0, True)
    assert p.demos == full.demos[-2:]


def test_multiple_choice_metrics_on_hand_checked_cases():
    # Summed log-likelihood prefers "a"; per character "bbbb" wins (-2/4 > -1/1).
    assert M.choice_acc([-1.0, -2.0], gold=0) == 1.0
    assert M.choice_acc_norm([-1.0, -2.0], ["a", "bbbb"], gold=1) == 1.0
    assert M.choice_acc_norm([-1.0, -2.0], ["a", "bbbb"], gold=0) == 0.0
    # GPT-3's normalisation: log P(c|x) - log P(c|"Answer:") = [-2, -1, -4]: choice 1.
    assert M.choice_acc_uncond([-3.0, -4.0, -5.0], [-1.0, -3.0, -1.0], gold=1) == 1.0
    assert M.choice_acc([-3.0, -4.0, -5.0], gold=1) == 0.0
    assert M.choice_acc([-1.0, -1.0], gold=0) == 1.0  # ties go to the first choice


def test_exact_match_with_configurable_normalisation():
    assert M.exact_match(" 143", "143") == 1.0  # surrounding whitespace is stripped by default
    assert M.exact_match(" 143", "143", M.Normalization(strip=False)) == 0.0
    assert M.exact_match("Paris", "paris") == 0.0
    assert M.exact_match("Paris!", "paris", M.Normalization(ignore_case=True, ignore_punctuation=True)) == 1.0
    gsm = taskfile.get("gsm8k").normalization
    assert M.exact_match("$1,234.", "1234", gsm) == 1.0 and M.exact_match("1,235", "1234", gsm) == 0.0


def test_gsm8k_answer_extraction():
    task = taskfile.get("gsm8k")
    chain = "She sells 16 - 3 - 4 = 9 eggs.\nShe makes 9 * 2 = $18.\n#### 18\n\nQuestion: next"
    assert M.extract_answer(chain, task.extract, task.extract_fallback) == "18"
    assert M.extract_answer("#### -1,500 dollars", task.extract) == "-1,500"
    # No marker: the last number of the chain of thought (flexible extraction); none at all: no answer.
    assert M.extract_answer("So she makes $18 a day.", task.extract, "last_number") == "$18"
    assert M.extract_answer("I do not know.", task.extract, "last_number") == ""
    assert M.extract_answer("I do not know.", task.extract) == ""
    doc = T.process_gsm8k({"question": "q", "answer": "2/2=<<2/2=1>>1 bolt\nSo 2+1=<<2+1=3>>3\n#### 3"})
    assert doc["gold"] == "3" and doc["cot"] == "2/2=1 bolt\nSo 2+1=3\n#### 3"
    assert T.process_gsm8k({"question": "q", "answer": "no marker"}) is None


@needs_data
def test_gsm8k_files_read_and_every_gold_answer_is_extracted():
    data = harness.load_task(taskfile.get("gsm8k"), str(SHARED_DATA))
    assert len(data.docs) == 1319 and len(data.pool) == 7473 and set(data.malformed.values()) == {0}
    for _, doc in data.docs:
        # The reference answer is the number after "####" in the worked solution, commas removed by normalisation.
        assert doc["answer"].rstrip().endswith("#### " + doc["gold"]) and "<<" not in doc["cot"]


def test_stderr_and_perplexity_closed_forms():
    values = [1.0, 0.0, 1.0, 1.0]  # mean 3/4, sample std 1/2, se 1/4
    assert M.summarize({"acc": values}) == {"acc": 0.75, "acc_stderr": 0.25}
    ppl, se = M.perplexity([-1.0, -3.0])  # exp(2); se(mean) = std([-1, -3], ddof=1) / sqrt(2) = 1
    assert math.isclose(ppl, math.exp(2.0)) and math.isclose(se, math.exp(2.0) * 1.0)


def test_model_graded_metric_is_the_normalised_probability_of_yes():
    class FakeLM:  # a grader that gives " Yes" log-prob -0.5 and " No" -2.0 whatever the prompt
        def __init__(self):
            self.requests = []

        def loglikelihood(self, requests):
            self.requests += requests
            from gptx.eval.requests import Loglikelihood

            return [Loglikelihood(-0.5 if cont == " Yes" else -2.0, False, 1) for _, cont in requests]

    lm = FakeLM()
    grader = M.ModelGrader(lm)
    score = grader("What is 2+2?", "4", "4")
    assert math.isclose(score, 1 / (1 + math.exp(-1.5)))
    assert "Reference answer: 4\nProposed answer: 4" in lm.requests[0][0]


@needs_data
@pytest.mark.parametrize(
    ("name", "n", "first"),
    [
        ("lambada", 5153, (" signs", "grin, I don't care about")),
        ("two_digit_addition", 2000, (" 143", "What is 98 plus 45?")),
        ("mid_word_1_anagrams", 10000, (" sticks", "\nskicts =")),
        ("hellaswag", 10042, ("is using wrap to wrap a pair of skis.", "Roof shingle removal: A man is sitting")),
        ("sst2", 872, ("positive", "it 's a charming and often affecting journey")),
        ("rte", 277, ("False", "Christopher Reeve had an accident. True or False?")),
        ("snli", 9842, ("Neither", "True, False or Neither?")),
        ("mnli", 9815, ("Neither", "True, False or Neither?")),
        ("tinyshakespeare", 722, (None, "")),
        ("shakespeare_lastword", 564, (None, ":\n")),
    ],
)
def test_task_entries_read_the_shared_files(name, n, first):
    task = taskfile.get(name)
    data = harness.load_task(task, str(SHARED_DATA))
    assert len(data.docs) == n and set(data.malformed.values()) == {0}
    doc = data.docs[0][1]
    answer, question = first
    assert question in task.render_context(doc)
    if answer is not None:
        assert answer in task.choice_texts(doc) if task.kind == T.CHOICE else task.answer(doc) == answer
    assert data.same_file == (task.fewshot is None)


def test_bad_records_are_counted_with_their_lines(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text(
        '{"context": "a", "completion": " b"}\nnot json\n{"context": "c"}\n\n{"context": "d", "completion": "e"}\n'
    )
    docs = T.read_records(str(path), "jsonl", ("context", "completion"))
    assert len(docs.docs) == 2 and docs.malformed == 2 and docs.malformed_lines == [2, 3]
    # Records the task's templates cannot fill (missing field, gold index out of range) are malformed too.
    mc = tmp_path / "mc.jsonl"
    mc.write_text('{"q": "a", "choices": ["x", "y"], "label": 1}\n{"q": "b", "choices": ["x"], "label": 3}\n'
                  '{"choices": ["x"], "label": 0}\n')  # fmt: skip
    docs = T.load_docs(T.Task("mc", T.CHOICE, "mc.jsonl", "jsonl", context="{q}", choices="choices"), "mc.jsonl",
                       str(tmp_path))  # fmt: skip
    assert len(docs.docs) == 1 and docs.malformed == 2 and docs.malformed_lines == [2, 3]
    with pytest.raises(DataError, match="unknown eval task 'nope'"):
        taskfile.get("nope")
    with pytest.raises(ValueError, match="metrics \\['exact_match'\\] do not apply to a choice task"):
        T.Task("x", T.CHOICE, "f", "jsonl", metrics=("exact_match",))
    with pytest.raises(FileNotFoundError, match="set config.eval.data_dir"):
        T.load_docs(taskfile.get("lambada"), "missing.jsonl", str(tmp_path))


def test_format_table_lists_each_metric_with_its_stderr():
    zero = {"acc": 0.5, "acc_stderr": 0.1, "n": 10, "mean_shots": 0.0}
    eight = {"acc": 0.75, "acc_stderr": 0.05, "n": 10, "mean_shots": 6.5}  # 6.5 demonstrations fitted on average
    table = harness.format_table({"sst2": {0: zero, 8: eight}})
    lines = table.splitlines()
    assert lines[0].split() == ["task", "shots", "used", "metric", "value", "stderr", "n"]
    assert lines[2].split() == ["sst2", "0", "0", "acc", "0.5000", "0.1000", "10"]
    assert lines[3].split() == ["sst2", "8", "6.50", "acc", "0.7500", "0.0500", "10"]  # a named column
