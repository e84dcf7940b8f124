"""The evaluation task: a file, a reader, templates, delimiters and metrics.

A document (doc) is a dict of fields; `context`, `target`, `gold` and the choice strings are templates over
those fields: Jinja2 for task files (gptx/eval/taskfile.py; every built-in task is one, in gptx/eval/builtin),
Python format strings for a `Task` built in code. A task's file is read as one of gptx.eval.records' formats
(JSON lines, JSON, CSV, TSV, text, compressed or not) or by one of the named `READERS` for what a record format
cannot express (HellaSwag's six-line layout; the bundled corpus's held-out split and the task built from it),
and its docs may go through one of the named `PROCESSORS` (LAMBADA's last word, GSM8K's answer); preprocessing
a template can express is a template filter (gptx/eval/filters.py: HellaSwag's).

Kinds, and the metrics each can report:
  choice      one prompt, several choice strings scored by log-likelihood: acc, acc_norm, acc_uncond
  completion  one target string: acc (every target token is the greedy one: LAMBADA's last-word accuracy and
              the GPT-3 arithmetic/word tasks, as lm-evaluation-harness scores them), ppl (exp of minus the
              mean target log-likelihood)
  generate    greedy generation until a stop string, answer extraction, then exact_match (and `graded` when
              a model grader is given); on request SQuAD's token f1, rouge1/2/L (gptx/eval/overlap.py) and the
              corpus-level bleu and chrf (gptx/eval/corpus_metrics.py)
  perplexity  rolling log-likelihood of whole texts: bits_per_byte, word_perplexity, token_perplexity
              (zero-shot only)
  code        n sampled completions per problem, each run against the problem's unit tests in the sandbox
              (gptx/eval/code.py, gptx/eval/sandbox.py): pass@k for each k of `pass_k` (Chen et al. 2021)

Paths are relative to config.eval.data_dir (the shared data sets), or `bundled:NAME` for files shipped in
gptx/assets. Demonstrations come from `fewshot` when a task has a training/validation file, else from the test
file itself, never the test example (see gptx/eval/harness.py).
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import os
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from gptx.data import finetune_tasks as ft
from gptx.data import loader, paths, sources
from gptx.data.sources import DataError
from gptx.eval import code, records, templates
from gptx.eval.metrics import Normalization

CHOICE, COMPLETION, GENERATE, PERPLEXITY, CODE = "choice", "completion", "generate", "perplexity", "code"
KIND_METRICS = {
    CODE: ("pass@k",),
    CHOICE: ("acc", "acc_norm", "acc_uncond"),
    COMPLETION: ("acc", "ppl"),
    GENERATE: ("exact_match", "graded", "f1", "rouge1", "rouge2", "rougeL", "bleu", "chrf"),
    PERPLEXITY: ("bits_per_byte", "word_perplexity", "token_perplexity"),
}


@dataclasses.dataclass(frozen=True)
class Task:
    """One evaluation task. Templates are `str.format` strings over a doc's fields."""

    name: str
    kind: str
    test: str  # file of the evaluated docs
    reader: str  # a format of gptx.eval.records, "auto" (from the file name), or a key of READERS
    fewshot: str | None = None  # file of demonstrations; None: the test file (minus the test example)
    process: str | None = None  # key of PROCESSORS, applied to every doc after reading
    fields: tuple[str, ...] = ()  # fields a JSON-lines record must have (others are malformed)
    context: str = "{context}"  # the prompt of a doc
    target: str = "{completion}"  # its answer: a demonstration's answer; the scored continuation (completion)
    choices: tuple[str, ...] | str = ()  # choice templates, or the name of a field holding the list of choices
    label: str = "label"  # field with the index of the gold choice
    gold: str = ""  # reference answer of a generate task ("": the target)
    description: str = ""  # put verbatim before the demonstrations (ends with its own delimiter)
    target_delimiter: str = " "  # between a context and its answer
    fewshot_delimiter: str = "\n\n"  # between demonstrations, and before the test context
    answer_context: str = "Answer:"  # the neutral context of acc_uncond
    metrics: tuple[str, ...] = ()  # () = all of the kind's metrics that apply (see KIND_METRICS)
    until: tuple[str, ...] = ("\n\n",)  # stop strings of a generate task
    max_new_tokens: int = 32
    extract: str = ""  # regex of the answer inside a generation (group 1), e.g. GSM8K's "#### N"
    extract_fallback: str = ""  # "last_number": when the regex misses, take the generation's last number
    normalization: Normalization = Normalization()
    note: str = ""  # provenance / how it differs from the published setup
    # code tasks: the record format (gptx.eval.code.FIELDS), samples per problem, how they are drawn, the k's
    program_format: str = ""
    samples: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    pass_k: tuple[int, ...] = (1,)
    # "format": templates are str.format strings and `label` a field; "jinja": templates are Jinja2 (as in
    # lm-evaluation-harness task files), a template that is a field's name is that field, and `label` is a
    # field or a template giving the gold index or the gold choice's text
    syntax: str = "format"
    fewshot_sampler: str = "random"  # "random": a seeded draw per test doc; "first_n": the pool's first K
    quoting: str = "minimal"  # CSV/TSV quote characters: "minimal" as Python's csv, "none" (GLUE's TSV files)

    def __post_init__(self):
        if self.kind not in KIND_METRICS:
            raise ValueError(f"task {self.name}: kind {self.kind!r} is not one of {', '.join(KIND_METRICS)}")
        allowed = [f"pass@{k}" for k in self.pass_k] if self.kind == CODE else KIND_METRICS[self.kind]
        bad = [m for m in self.metrics if m not in allowed]
        if bad:
            raise ValueError(f"task {self.name}: metrics {bad} do not apply to a {self.kind} task")
        if self.reader not in (*records.FORMATS, "auto", *READERS):
            known = ", ".join((*records.FORMATS, *READERS))
            raise ValueError(f"task {self.name}: unknown format {self.reader!r}; formats: {known}")
        if self.process and self.process not in PROCESSORS:
            raise ValueError(
                f"task {self.name}: unknown processor {self.process!r}; processors: {', '.join(PROCESSORS)}"
            )
        if self.quoting not in QUOTING:
            raise ValueError(f"task {self.name}: quoting {self.quoting!r} is not one of {', '.join(QUOTING)}")
        if self.fewshot_sampler not in ("random", "first_n"):
            raise ValueError(f"task {self.name}: fewshot_sampler {self.fewshot_sampler!r} is not random or first_n")
        if self.kind == CODE and (self.program_format not in code.FIELDS or self.samples < 1 or not self.pass_k):
            raise ValueError(
                f"task {self.name}: a code task needs program_format in {list(code.FIELDS)}, samples >= 1 and "
                "pass_k (e.g. [1, 10])"
            )

    # Rendering -----------------------------------------------------------------------------------------------

    def fill(self, template: str, doc: dict[str, Any]) -> Any:
        """A template filled from a doc, in the task's syntax."""
        if self.syntax == "jinja":
            return doc[template] if template in doc else templates.render(template, doc)
        return template.format(**doc)

    def render_context(self, doc: dict[str, Any]) -> str:
        return str(self.fill(self.context, doc))

    def choice_texts(self, doc: dict[str, Any]) -> list[str]:
        if isinstance(self.choices, str):
            if self.syntax == "jinja" and self.choices not in doc:
                return [str(c) for c in templates.render_list(self.choices, doc)]
            return list(doc[self.choices])
        return [str(self.fill(c, doc)) for c in self.choices]

    def gold_index(self, doc: dict[str, Any]) -> int:
        """Index of the gold choice: `label` is a field (or a Jinja template) holding it, or the gold text."""
        value = doc[self.label] if self.syntax == "format" or self.label in doc else self.fill(self.label, doc)
        if isinstance(value, str) and not value.strip().lstrip("-").isdigit():
            return self.choice_texts(doc).index(value)
        index = int(value)
        if not 0 <= index < len(self.choice_texts(doc)):
            raise IndexError(f"gold index {index} out of range")
        return index

    def answer(self, doc: dict[str, Any]) -> str:
        """The correct answer as a demonstration shows it (after the target delimiter)."""
        if self.kind == CHOICE:
            return self.choice_texts(doc)[self.gold_index(doc)]
        return str(self.fill(self.target, doc))

    def reference(self, doc: dict[str, Any]) -> str:
        """What a generation is compared with."""
        return str(self.fill(self.gold or self.target, doc))

    def demonstration(self, doc: dict[str, Any]) -> str:
        """context + target delimiter + answer: one solved example in a few-shot prompt."""
        return self.render_context(doc) + self.target_delimiter + self.answer(doc)

    @property
    def active_metrics(self) -> tuple[str, ...]:
        if self.metrics:
            return self.metrics
        if self.kind == CODE:
            return tuple(f"pass@{k}" for k in self.pass_k)
        if self.kind == GENERATE:  # overlap metrics when a task asks for them
            return ("exact_match",)
        return tuple(m for m in KIND_METRICS[self.kind] if m != "graded")


# ---------------------------------------------------------------------------------------------------------------
# Readers: path -> Docs (malformed records counted with their line numbers, never silently dropped)


@dataclasses.dataclass
class Docs:
    path: str
    docs: list[dict[str, Any]]
    malformed: int = 0
    malformed_lines: list[int] = dataclasses.field(default_factory=list)
    lines: list[int] | None = None  # the file line of each doc, where the reader knows it

    def summary(self) -> str:
        lines = f" (lines {', '.join(map(str, self.malformed_lines[:20]))})" if self.malformed else ""
        return f"{self.path}: {len(self.docs)} docs, {self.malformed} malformed{lines}"


QUOTING = ("minimal", "none")


def read_records(path: str, fmt: str = "", fields: Sequence[str] = (), quoting: str = "minimal") -> Docs:
    """The docs of a file in one of gptx.eval.records' formats ("" = from the file name): JSON lines, JSON, CSV,
    TSV, text; `quoting` "none" reads CSV/TSV quote characters as text."""
    recs = records.read(path, fmt, fields, quote=quoting != "none")
    return Docs(path, recs.docs, len(recs.malformed_lines), recs.malformed_lines, recs.lines)


def read_hellaswag(path: str, fields: Sequence[str] = ()) -> Docs:
    """HellaSwag's six-line text layout (gptx.data.finetune_tasks.read_hellaswag) as {"context", "endings",
    "label"}: context is activity_label + ": " + ctx, as the file holds it (see filters.capitalize_ctx_b)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"task file {path} not found (set config.eval.data_dir)")
    result = ft.read_hellaswag(path)
    docs = [{"context": e.text_a, "endings": list(e.choices), "label": e.label} for e in result.examples]
    return Docs(result.path, docs, result.malformed, list(result.malformed_lines))


def read_corpus_val(path: str, fields: Sequence[str] = ()) -> Docs:
    """The validation documents of a pretraining corpus (gptx.data.loader.split_train_val, 10%) as {"text"}."""
    _, val = loader.split_train_val(sources.read_documents(path, "blank_line"), 0.1)
    return Docs(path, [{"text": d} for d in val])


def _speech_first_lines(docs: Sequence[str]) -> list[dict[str, str]]:
    """{"name", "pre", "last"} of speeches ("NAME:\nfirst line ...") whose first line has >= 4 words and ends in a
    word (trailing punctuation dropped)."""
    out = []
    for d in docs:
        lines = d.split("\n")
        m = re.match(r"^(.*\S)\s+([A-Za-z']+)[.,;:!?]*$", lines[1]) if len(lines) > 1 else None
        if lines[0].endswith(":") and m and len(lines[1].split()) >= 4:
            out.append({"name": lines[0][:-1], "pre": m.group(1), "last": m.group(2)})
    return out


def _word_counts(docs: Sequence[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for d in docs:
        for w in re.findall(r"[A-Za-z']+", d.lower()):
            counts[w] = counts.get(w, 0) + 1
    return counts


def read_shakespeare_lastword(path: str, fields: Sequence[str] = ()) -> Docs:
    """A LAMBADA-style multiple-choice task built from a Tiny Shakespeare-style corpus.

    Each speech of the validation split whose first line has at least 4 words and ends in a word gives a doc:
    context "NAME:\n<first line without its last word>", choices the true last word and 3 last words of first
    lines from the training split, gold at a seeded position. The distractors are matched to the answer's
    frequency in the training text (`_matched_distractors`), so that knowing which words are common, without
    reading the context, does not pick the answer: uniform
    distractors let a context-free frequency baseline score 52.7% against the 25% of chance. Each doc keeps
    `choice_counts` (training-text counts of its choices) for that baseline (`frequency_baseline`).
    Distractors come from the training split so that demonstrations (held-out lines with their answers) never
    show a distractor as an answer. Speeches without such a first line are not task items (not malformed).
    """
    train, val = loader.split_train_val(sources.read_documents(path, "blank_line"), 0.1)
    docs = _speech_first_lines(val)
    counts = _word_counts(train)
    spelling = {}  # a word as training lines end in it (the first spelling in sorted order: "Isabella")
    for w in sorted({u["last"] for u in _speech_first_lines(train)}):
        spelling.setdefault(w.lower(), w)
    by_count = sorted(spelling, key=lambda w: (counts.get(w, 0), w))
    rng = np.random.default_rng(0)
    for doc in docs:
        picked = [spelling[w] for w in _matched_distractors(doc["last"].lower(), by_count, counts, rng)]
        label = int(rng.integers(4))
        choices = list(picked)
        choices.insert(label, doc["last"])
        doc.update(choices=choices, label=label, choice_counts=[counts.get(c.lower(), 0) for c in choices])
    return Docs(path, docs)


def _matched_distractors(answer: str, by_count: list[str], counts: dict[str, int], rng) -> list[str]:
    """3 distractors of about the answer's training frequency such that the answer's frequency rank among the
    4 choices is uniform: r of them (r uniform in 0..3) are the next more frequent words, 3 - r the next less
    frequent ones (each drawn from the 4 nearest), words of the same count filling a side that runs out (a tie,
    which no frequency rule can break). So no rule over frequencies alone beats chance in expectation."""
    n = counts.get(answer, 0)
    above = [w for w in by_count if counts.get(w, 0) > n and w != answer][:4]  # nearest more frequent first
    below = [w for w in reversed(by_count) if counts.get(w, 0) < n and w != answer][:4]
    equal = [w for w in by_count if counts.get(w, 0) == n and w != answer]
    r = int(rng.integers(4))
    take = [above[i] for i in rng.permutation(len(above))[:r]]
    take += [below[i] for i in rng.permutation(len(below))[: 3 - r]]
    spare = [equal[i] for i in rng.permutation(len(equal))] + [w for w in above + below if w not in take]
    return take + spare[: 3 - len(take)]


def frequency_baseline(docs: Sequence[dict[str, Any]]) -> float:
    """Accuracy of the context-free baseline: pick the choice most frequent in the training text (ties: the
    first), as a model that learnt only word frequencies would."""
    return float(np.mean([int(np.argmax(d["choice_counts"])) == int(d["label"]) for d in docs]))


# Named readers, a task file's `format:` for files no record format describes: (path, fields) -> Docs
READERS: dict[str, Callable[..., Docs]] = {
    "hellaswag": read_hellaswag,
    "corpus_val": read_corpus_val,
    "shakespeare_lastword": read_shakespeare_lastword,
}


# ---------------------------------------------------------------------------------------------------------------
# Processors: doc -> doc with the fields the templates use (None: malformed)


def process_lambada(doc: dict[str, Any]) -> dict[str, Any] | None:
    """LAMBADA: the passage without its last word is the context; " " + the last word is the target."""
    text = doc["text"].strip()
    cut = text.rfind(" ")
    return {**doc, "context": text[:cut], "completion": text[cut:]} if cut > 0 else None


GSM8K_ANSWER = r"#### (\-?[0-9\.\,]+)"


def process_gsm8k(doc: dict[str, Any]) -> dict[str, Any] | None:
    """GSM8K: `cot` is the worked solution without the calculator annotations <<48/2=24>>, ending in "#### N";
    `gold` is N."""
    m = re.search(GSM8K_ANSWER, doc["answer"])
    if not m:
        return None
    return {**doc, "cot": re.sub(r"<<[^>]*>>", "", doc["answer"]), "gold": m.group(1)}


PROCESSORS: dict[str, Callable[[dict[str, Any]], dict[str, Any] | None]] = {
    "lambada": process_lambada,
    "gsm8k": process_gsm8k,
}


# ---------------------------------------------------------------------------------------------------------------
# Loading


def resolve(path: str, data_dir: str) -> str:
    """A task path: `bundled:NAME` in gptx/assets, `builtin:NAME` in gptx/eval/builtin (the task files and data
    shipped with the harness), else relative to data_dir (itself relative to the repo root)."""
    if path.startswith("bundled:"):
        return str(importlib.resources.files("gptx") / "assets" / path.removeprefix("bundled:"))
    if path.startswith("builtin:"):
        return str(importlib.resources.files("gptx.eval") / "builtin" / path.removeprefix("builtin:"))
    return paths.data_path(data_dir, path)


def load_docs(task: Task, path: str, data_dir: str) -> Docs:
    """Reads and processes the docs of one of a task's files; a doc the processor rejects is malformed."""
    full = resolve(path, data_dir)
    if task.reader in READERS:
        docs = READERS[task.reader](full, task.fields)
    else:
        docs = read_records(full, "" if task.reader == "auto" else task.reader, task.fields, task.quoting)
    kept = []
    for i, d in enumerate(docs.docs):
        p = PROCESSORS[task.process](d) if task.process else d
        if p is None or not _renders(task, p):
            docs.malformed += 1
            # the record's file line where the reader knows it, else its number among the file's records
            docs.malformed_lines.append(docs.lines[i] if docs.lines else i + 1)
        else:
            kept.append(p)
    docs.docs = kept
    docs.malformed_lines.sort()
    if not docs.docs:
        raise DataError(f"{docs.path}: no usable records for task {task.name} ({docs.malformed} malformed)")
    return docs


def _renders(task: Task, doc: dict[str, Any]) -> bool:
    """Whether the task's templates fill from the doc (fields present, gold index in range)."""
    try:
        if task.kind == PERPLEXITY:
            task.render_context(doc)
            return True
        task.demonstration(doc)
        if task.kind == CHOICE:
            task.choice_texts(doc)
        if task.kind == GENERATE:
            task.reference(doc)
        if task.kind == CODE:
            code.program(task.program_format, doc, code.reference_solution(task.program_format, doc))
    except (KeyError, IndexError, ValueError, TypeError, SyntaxError, templates.TemplateError):
        return False
    return True
