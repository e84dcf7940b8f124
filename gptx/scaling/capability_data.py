"""Generated problems whose pass rate small models raise with compute, written as code and judged by unit tests.

A problem is a question in a comment and an integer answer the model writes after `return`; the harness samples
n completions, runs each with the problem's unit test in the sandbox and counts the passes (HumanEval's format):

    def answer():                    def answer():
        # max of 3 8 5 1                 # 37 + 48
        return 8                         return 85

Families (config.scaling.task_data): `max_digit`, the largest of four digits (builtin task `max_digit_code`),
`arithmetic`, two-digit addition and subtraction (`arithmetic_code`; beyond the demo's models: a d16 model
trained on 0.3M tokens, 30% of them these problems, passed 2 of 768 samples on 48 problems), and `graded`,
operations of graded difficulty on digit lists (`graded_code`, gptx.scaling.graded_data: a mixture of onsets).

Why it behaves like a capability: the answer has to be computed from the question, not recalled (the evaluated
problems never occur in training), and at temperature 1 a problem's pass rate is the probability the model
gives to a correct answer, so −log pass_rate is that answer's share of the loss. It falls with compute from
log 10 (a model that only knows a digit comes) to log 4 (one that copies a digit of the question), then towards 0
once the comparison is learnt. Measured on configs/scaling.py:capability, the second step is abrupt: the mean
pass@1 is 0.05, 0.13, 0.22, 0.24 for the four fitted widths (3.5e10 to 5.2e11 FLOPs), then 0.91 at d72
(3.6e12), so a power law fitted below the step under-predicts the run above it.

Training data: every problem of the family except the evaluated ones. Decontamination is an exact-problem check
on the question: a problem is 6-7 words with its answer, far shorter than the data pipeline's 13-grams, and every
shorter N-gram ("max of 3 8") is shared by hundreds of different problems, so an N-gram check would see nothing
at N = 13 and flag most of the family at N <= 6. The problems are shuffled by seed and packed `PER_DOC` to a
document; `mixed_corpus` mixes them into config.data.corpus with gptx.data.mix at config.scaling.task_data_weight
of the bytes.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import itertools
import json
import re
from collections.abc import Iterable, Sequence

import ml_collections
import numpy as np

from gptx import fs
from gptx.data import mix, sources
from gptx.errors import ConfigError
from gptx.scaling import graded_data

FAMILIES = ("max_digit", "arithmetic", "graded")  # values of config.scaling.task_data
# builtin tasks of the evaluated problems
TASK_FILE = {"max_digit": "max_digit_code", "arithmetic": "arithmetic_code", "graded": "graded_code"}
PER_DOC = 8  # problems per training document
N_EVAL, EVAL_SEED = 48, 20230315  # the shipped evaluation problems: eval_problems(family, N_EVAL, EVAL_SEED)
CORPUS, REPORT = "task_data_corpus.txt", "task_data.json"  # written into the sweep's workdir
_QUESTION = re.compile(r"# (.+)\n")


@dataclasses.dataclass(frozen=True, order=True)
class Problem:
    """A question ("37 + 48", "max of 3 8 5 1") and its integer answer."""

    question: str
    answer: int

    @property
    def prompt(self) -> str:
        return f"def answer():\n    # {self.question}\n    return "

    @property
    def text(self) -> str:
        """The problem as training text: the prompt and its solution."""
        return f"{self.prompt}{self.answer}"


def all_problems(family: str) -> list[Problem]:
    """Every problem of a family, in a fixed order.

    max_digit: the largest of four digits, 10⁴ problems. arithmetic: a + b and a − b (a >= b) for a, b in
    0..99, 10⁴ + 5,050 problems. graded: too many to enumerate (a ConfigError; it is sampled instead).
    """
    if family == "max_digit":
        return [
            Problem(f"max of {a} {b} {c} {d}", max(a, b, c, d)) for a, b, c, d in itertools.product(range(10), repeat=4)
        ]
    if family == "arithmetic":
        r = range(100)
        return [Problem(f"{a} + {b}", a + b) for a in r for b in r] + [
            Problem(f"{a} - {b}", a - b) for a in r for b in r if a >= b
        ]
    if family == "graded":
        raise ConfigError("the graded family is sampled (gptx.scaling.graded_data), not enumerated")
    raise ConfigError(f"config.scaling.task_data={family!r} is not one of {', '.join(FAMILIES)}")


def _graded(questions: Iterable[str]) -> list[Problem]:
    return [Problem(q, graded_data.answer(q)) for q in questions]


def eval_problems(family: str, n: int = N_EVAL, seed: int = EVAL_SEED) -> list[Problem]:
    """n distinct problems of the family drawn by seed: the evaluated set (graded: round-robin over its strata)."""
    if family == "graded":
        return _graded(graded_data.sample_questions(n, seed, distinct=True))
    every = all_problems(family)
    return [every[i] for i in sorted(np.random.default_rng(seed).choice(len(every), n, replace=False).tolist())]


def task_record(i: int, p: Problem) -> dict[str, str]:
    """A problem as a HumanEval record (gptx.eval.code's `humaneval` format)."""
    test = f"def check(candidate):\n    assert candidate() == {p.answer}\n"
    return {"task_id": f"{i}", "prompt": p.prompt, "canonical_solution": f"{p.answer}\n", "test": test,
            "entry_point": "answer"}  # fmt: skip


def task_file_text(problems: Sequence[Problem]) -> str:
    """The task's JSONL: one HumanEval record per problem."""
    return "".join(json.dumps(task_record(i, p)) + "\n" for i, p in enumerate(problems))


def builtin_path(family: str) -> str:
    """The shipped JSONL of the family's evaluated problems."""
    return str(importlib.resources.files("gptx") / "eval" / "builtin" / f"{TASK_FILE[family]}.jsonl")


def read_problems(path: str) -> list[Problem]:
    """The problems of a task JSONL, parsed back from their prompts and solutions."""
    out = []
    for lineno, line in enumerate(fs.read_text(path).splitlines(), 1):
        if line.strip():
            rec = json.loads(line)
            m = _QUESTION.search(rec["prompt"])
            if m is None:
                raise ConfigError(f"{path}:{lineno}: no '# question' line in the prompt")
            out.append(Problem(m[1], int(rec["canonical_solution"])))
    return out


def training_problems(family: str, exclude: Iterable[Problem], seed: int) -> list[Problem]:
    """Every problem of the family whose question is not one of `exclude`'s (the exact-problem
    decontamination), shuffled by seed; graded: graded_data.NUM_TRAIN problems sampled by seed, none of `exclude`."""
    banned = {p.question for p in exclude}
    if family == "graded":
        return _graded(graded_data.sample_questions(graded_data.NUM_TRAIN, seed, exclude=banned))
    kept = [p for p in all_problems(family) if p.question not in banned]
    return [kept[i] for i in np.random.default_rng(seed).permutation(len(kept)).tolist()]


def training_documents(problems: Sequence[Problem], per_doc: int = PER_DOC) -> list[str]:
    """Problems packed `per_doc` to a document, one problem after another (no blank lines inside)."""
    return ["\n".join(p.text for p in problems[i : i + per_doc]) for i in range(0, len(problems), per_doc)]


def _records(name: str, texts: Sequence[str]) -> list[dict]:
    return [{"id": f"{name}:{i}", "source": name, "text": t} for i, t in enumerate(texts)]


def mixed_corpus(cfg: ml_collections.ConfigDict, workdir: str) -> ml_collections.ConfigDict:
    """cfg training on config.data.corpus mixed with the generated task data (config.scaling.task_data).

    The mix (gptx.data.mix) gives the task data `task_data_weight` of the bytes and the corpus the rest, each
    corpus document taken once: total = corpus bytes / (1 − weight); the generated documents repeat when their
    share exceeds their bytes. Written to WORKDIR/task_data_corpus.txt (blank-line separated documents), with
    WORKDIR/task_data.json reporting the mix and the decontamination; an existing file is reused when it was mixed
    with the same settings, and is a ConfigError otherwise (the workdir's runs trained on it).
    """
    s = cfg.scaling
    if not s.task_data:
        return cfg
    if s.task_data not in FAMILIES:
        raise ConfigError(f"config.scaling.task_data={s.task_data!r} is not one of {', '.join(FAMILIES)}")
    if not 0 < s.task_data_weight < 1:
        raise ConfigError(f"config.scaling.task_data_weight={s.task_data_weight} must be in (0, 1)")
    if fs.isdir(cfg.data.corpus):
        raise ConfigError(
            f"config.scaling.task_data mixes into a text corpus; {cfg.data.corpus} is a prepared one: add the task "
            "data as a source of config.data_prep.sources instead (gptx.scaling.capability_data.write_source)"
        )
    out = fs.join(workdir, CORPUS)
    settings = {"family": s.task_data, "weight": float(s.task_data_weight), "seed": int(s.seed),
                "corpus": cfg.data.corpus}  # fmt: skip
    if fs.exists(out):
        made = json.loads(fs.read_text(fs.join(workdir, REPORT)))
        before = {k: made.get(k) for k in settings}
        if before != settings:
            raise ConfigError(
                f"{workdir} holds task data mixed with {before}, not {settings}: its runs trained on that mix; "
                "use a new workdir"
            )
    else:
        base = list(sources.read_documents(cfg.data.corpus, cfg.data.doc_separator))
        evaluated = read_problems(builtin_path(s.task_data))
        trained = training_problems(s.task_data, evaluated, s.seed)
        docs = training_documents(trained)
        w = float(s.task_data_weight)
        by_source = {"corpus": _records("corpus", base), s.task_data: _records(s.task_data, docs)}
        base_bytes = sum(len(d.encode()) for d in base)
        total = int(base_bytes / (1 - w)) - 1  # the corpus's share stays below its bytes: no document twice
        mixed, rows = mix.mix(by_source, {"corpus": 1 - w, s.task_data: w}, total, s.seed)
        fs.makedirs(workdir)
        n_train = len({p.question for p in trained})  # distinct
        report = {**settings, "evaluated_problems": len(evaluated), "training_problems": n_train, "sources": rows}
        fs.write_atomic(fs.join(workdir, REPORT), json.dumps(report, indent=1))
        fs.write_atomic(out, "\n\n".join(r["text"] for r in mixed) + "\n")
    c = ml_collections.ConfigDict(cfg.to_dict())
    c.data.update(corpus=fs.absolute(out), doc_separator="blank_line")
    return c


def write_source(path: str, family: str, seed: int = 0) -> int:
    """The training documents as JSONL {"id", "text"} for config.data_prep.sources (give the source
    `filters: False`: digit-heavy text fails the heuristic filters); returns the number of documents."""
    docs = training_documents(training_problems(family, read_problems(builtin_path(family)), seed))
    fs.write_atomic(path, "".join(json.dumps({"id": f"{family}:{i}", "text": d}) + "\n" for i, d in enumerate(docs)))
    return len(docs)
