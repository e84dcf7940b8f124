"""GPT-1 fine-tuning tasks: readers for SST-2, RTE, SNLI and HellaSwag, and the paper's input transformations.

Radford et al. (2018), Sec. 3.3 and Figure 1: every task becomes one or more token sequences for the same
Transformer, framed by special tokens that the pretrained model never saw:

  classification   [start] text [extract]
  entailment       [start] premise [delim] hypothesis [extract]
  similarity       [start] a [delim] b [extract]  and  [start] b [delim] a [extract]  (representations summed)
  multiple choice  [start] context [delim] answer_k [extract]  for each choice k (softmax over choices)

Special token ids. gptx tokenizers (SentencePiece) own ids [0, tokenizer.vocab_size); the fine-tuning tokens
take the next ids: start = V, delim = V + 1, extract = V + 2 and, in multi-task runs (the "second paradigm"),
one task token per task, V + 3 + i, placed right after start: [start] [task_i] ... [extract]. So
config.model.vocab_size must be at least V + 3 (+ number of tasks when several run together); a pretrained
embedding with fewer rows is grown with N(0, 0.02) rows when loaded (gptx.train.checkpoints.grow_embedding).

Truncation, when a layout does not fit in the sequence length: the longer text part loses one token at a time
until it fits. A lone text is cut in the middle (its head and tail are kept: sentiment often sits at either
end); the first part of a pair (premise, context) loses tokens from its start, so the words leading into the
delimiter stay; the second part (hypothesis, answer) loses tokens from its end.

Data sets without a training file (SNLI: only snli_dev.jsonl; HellaSwag: only the validation file) are split
into train/eval with a fixed seed (`split`), so the reported dev accuracy is on held-out examples of the
dev file, not on the official dev set.
"""

from __future__ import annotations

import bz2
import csv
import dataclasses
import gzip
import io
import json
import lzma
import os
from collections.abc import Callable, Sequence

import numpy as np

from gptx import fs
from gptx.data.tokenizer import Tokenizer

CLASSIFICATION, ENTAILMENT, SIMILARITY, MULTIPLE_CHOICE = "classification", "entailment", "similarity", "choice"
KINDS = (CLASSIFICATION, ENTAILMENT, SIMILARITY, MULTIPLE_CHOICE)
N_SPECIAL = 3  # start, delim, extract


@dataclasses.dataclass(frozen=True)
class Example:
    """One labelled task instance. `text_b` is the hypothesis / second sentence; `choices` the candidate endings
    of a multiple-choice task (the label is then the index of the right one)."""

    text_a: str
    text_b: str = ""
    choices: tuple[str, ...] = ()
    label: int = 0


@dataclasses.dataclass
class ReadResult:
    """Parsed examples of one file, and the malformed records skipped (counted, with their line numbers)."""

    path: str
    examples: list[Example]
    malformed: int = 0
    malformed_lines: list[int] = dataclasses.field(default_factory=list)

    def bad(self, line: int) -> None:
        self.malformed += 1
        if len(self.malformed_lines) < 20:
            self.malformed_lines.append(line)

    def summary(self) -> str:
        where = f" (lines {', '.join(map(str, self.malformed_lines))}{', ...' if self.malformed > 20 else ''})"
        return (
            f"{self.path}: {len(self.examples)} examples, {self.malformed} malformed{where if self.malformed else ''}"
        )


def _open_text(path: str):
    """Text of a local or gs:// task file, decompressed by its suffix."""
    if not fs.exists(path):
        raise FileNotFoundError(f"task file {path} not found (set config.finetune.data_dir)")
    opener = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}.get(os.path.splitext(path)[1])
    if not fs.is_remote(path):
        return (opener or open)(path, "rt", encoding="utf-8", errors="replace", newline="")
    # An object is small enough to read whole (the GLUE/ROCStories files are a few MB).
    raw = io.BytesIO(fs.read_bytes(path))
    return io.TextIOWrapper(opener(raw) if opener else raw, encoding="utf-8", errors="replace", newline="")


def _read_tsv(path: str, columns: Sequence[str], parse: Callable[[dict[str, str]], Example | None]) -> ReadResult:
    """A headed TSV; rows missing a column, with an unknown label or empty text are malformed."""
    out = ReadResult(path, [])
    with _open_text(path) as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if header is None or any(c not in header for c in columns):
            raise ValueError(f"{path}: header {header} lacks the columns {list(columns)}")
        idx = {c: header.index(c) for c in columns}
        for row in reader:
            line = reader.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            try:
                ex = parse({c: row[i] for c, i in idx.items()})
            except (IndexError, KeyError, ValueError):
                ex = None
            if ex is None:
                out.bad(line)
            else:
                out.examples.append(ex)
    return out


def read_sst2(path: str) -> ReadResult:
    """GLUE SST-2 TSV (`sentence`, `label` 0/1)."""

    def parse(r):
        text, label = r["sentence"].strip(), int(r["label"])
        return Example(text, label=label) if text and label in (0, 1) else None

    return _read_tsv(path, ("sentence", "label"), parse)


RTE_LABELS = ("entailment", "not_entailment")


def read_rte(path: str) -> ReadResult:
    """GLUE RTE TSV (`index`, `sentence1`, `sentence2`, `label` entailment/not_entailment)."""

    def parse(r):
        a, b, label = r["sentence1"].strip(), r["sentence2"].strip(), r["label"].strip()
        return Example(a, b, label=RTE_LABELS.index(label)) if a and b and label in RTE_LABELS else None

    return _read_tsv(path, ("sentence1", "sentence2", "label"), parse)


SNLI_LABELS = ("entailment", "neutral", "contradiction")


def read_snli(path: str) -> ReadResult:
    """SNLI JSON lines `{"premise", "hypothesis", "label"}` (label entailment/neutral/contradiction)."""
    out = ReadResult(path, [])
    with _open_text(path) as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
                a, b, label = r["premise"].strip(), r["hypothesis"].strip(), r["label"]
                ok = a and b and label in SNLI_LABELS
            except (ValueError, KeyError, TypeError, AttributeError):
                ok = False
            if ok:
                out.examples.append(Example(a, b, label=SNLI_LABELS.index(label)))
            else:
                out.bad(line_no)
    return out


def read_hellaswag(path: str, n_choices: int = 4) -> ReadResult:
    """HellaSwag as 6 lines per task: context, gold label (0-based), then the 4 endings (bz2 or plain text).

    A record whose label line is not an integer in [0, 4) or with an empty line is malformed; the reader then
    resynchronises on the next line that is followed by a valid label line, so one broken record costs only
    itself.
    """
    out = ReadResult(path, [])
    with _open_text(path) as f:
        lines = f.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    size, i = 2 + n_choices, 0

    def label_at(j: int) -> int | None:
        s = lines[j].strip() if j < len(lines) else ""
        return int(s) if s.isdigit() and int(s) < n_choices else None

    while i < len(lines):
        rec = lines[i : i + size]
        label = label_at(i + 1)
        if len(rec) == size and label is not None and all(x.strip() for x in rec):
            out.examples.append(Example(rec[0].strip(), choices=tuple(x.strip() for x in rec[2:]), label=label))
            i += size
            continue
        out.bad(i + 1)
        i += 1
        while i < len(lines) and label_at(i + 1) is None:  # skip to the next context line
            i += 1
    return out


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """A fine-tuning task: its input transformation (`kind`), label names, reader and files (relative to
    config.finetune.data_dir). `dev` None: no dev file; the training file is split with a fixed seed."""

    name: str
    kind: str
    labels: tuple[str, ...]
    reader: Callable[[str], ReadResult]
    train: str
    dev: str | None

    @property
    def n_outputs(self) -> int:
        """Logits per example: classes, or choices for multiple choice."""
        return len(self.labels)

    @property
    def n_seqs(self) -> int:
        """Token sequences per example."""
        return {SIMILARITY: 2, MULTIPLE_CHOICE: len(self.labels)}.get(self.kind, 1)


TASKS: dict[str, TaskSpec] = {
    "sst2": TaskSpec("sst2", CLASSIFICATION, ("negative", "positive"), read_sst2, "sst2/train.tsv", "sst2/dev.tsv"),
    "sst2_full": TaskSpec(
        "sst2_full", CLASSIFICATION, ("negative", "positive"), read_sst2, "sst2/train_full.tsv", "sst2/dev.tsv"
    ),
    "rte": TaskSpec("rte", ENTAILMENT, RTE_LABELS, read_rte, "rte/train.tsv", "rte/dev.tsv"),
    "snli": TaskSpec("snli", ENTAILMENT, SNLI_LABELS, read_snli, "nli/snli_dev.jsonl", None),
    "hellaswag": TaskSpec(
        "hellaswag", MULTIPLE_CHOICE, ("0", "1", "2", "3"), read_hellaswag, "hellaswag/hellaswag_val_full.txt.bz2", None
    ),
}


def split(examples: Sequence[Example], eval_fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """A fixed-seed random split into (train, eval): the same seed gives the same split on every run."""
    order = np.random.default_rng(seed).permutation(len(examples))
    n_eval = max(1, int(round(len(examples) * eval_fraction)))
    return [examples[i] for i in order[n_eval:]], [examples[i] for i in order[:n_eval]]


# ------------------------------------------------------------------------------------------------------------
# Input transformations


@dataclasses.dataclass(frozen=True)
class SpecialTokens:
    """Ids of the fine-tuning tokens, all beyond the tokenizer's pieces (see the module docstring)."""

    start: int
    delim: int
    extract: int
    task: tuple[int, ...] = ()  # one per task in multi-task runs, else empty

    @classmethod
    def for_tokenizer(cls, tokenizer_vocab: int, n_task_tokens: int = 0) -> SpecialTokens:
        v = tokenizer_vocab
        return cls(v, v + 1, v + 2, tuple(range(v + N_SPECIAL, v + N_SPECIAL + n_task_tokens)))

    @property
    def vocab_needed(self) -> int:
        return max(self.start, self.delim, self.extract, *self.task) + 1


def _fit(a: list[int], b: list[int] | None, budget: int) -> tuple[list[int], list[int] | None]:
    """Truncates the text parts to `budget` tokens in total, as the module docstring says."""
    if b is None:
        if len(a) <= budget:
            return a, None
        head = (budget + 1) // 2
        return a[:head] + a[len(a) - (budget - head) :], None
    a, b = list(a), list(b)
    while len(a) + len(b) > budget:
        if len(a) >= len(b):
            a.pop(0)
        else:
            b.pop()
    return a, b


def layout(
    a: list[int], b: list[int] | None, special: SpecialTokens, seq_len: int, task_token: int | None
) -> list[int]:
    """`[start] ([task]) a ([delim] b) [extract]`, texts truncated to fit seq_len."""
    prefix = [special.start] + ([task_token] if task_token is not None else [])
    n_special = len(prefix) + 1 + (b is not None)
    budget = seq_len - n_special
    if budget < 2:
        raise ValueError(f"sequence length {seq_len} leaves no room for text after {n_special} special tokens")
    a, b = _fit(a, b, budget)
    return prefix + a + ([special.delim] + b if b is not None else []) + [special.extract]


def transform(
    ex: Example,
    kind: str,
    tokenizer: Tokenizer,
    special: SpecialTokens,
    seq_len: int,
    task_token: int | None = None,
) -> list[list[int]]:
    """The token sequences of one example under the paper's transformation for `kind` (unpadded)."""
    enc = tokenizer.encode
    if kind == CLASSIFICATION:
        return [layout(enc(ex.text_a), None, special, seq_len, task_token)]
    if kind == ENTAILMENT:
        return [layout(enc(ex.text_a), enc(ex.text_b), special, seq_len, task_token)]
    if kind == SIMILARITY:
        a, b = enc(ex.text_a), enc(ex.text_b)
        return [layout(a, b, special, seq_len, task_token), layout(b, a, special, seq_len, task_token)]
    if kind == MULTIPLE_CHOICE:
        ctx = enc(ex.text_a)
        return [layout(ctx, enc(c), special, seq_len, task_token) for c in ex.choices]
    raise ValueError(f"unknown task kind {kind!r}; one of {', '.join(KINDS)}")


def pad_example(
    seqs: list[list[int]], label: int, task: int, n_seqs: int, seq_len: int, pad_id: int, filler: list[int]
) -> dict[str, np.ndarray]:
    """Fixed-shape arrays of one example: right-padded sequences, and `filler` (a short valid sequence, masked
    out by `seq_mask`) for sequence slots this task does not use in a multi-task batch.

    Returns tokens/segment_ids [n_seqs, seq_len] (segment 1 real, 0 pad), extract_pos and seq_mask [n_seqs],
    label, task and weight [1] (rank 2 once batched, as the mesh's batch sharding needs).
    """
    tokens = np.full((n_seqs, seq_len), pad_id, np.int32)
    segs = np.zeros((n_seqs, seq_len), np.int32)
    extract = np.zeros((n_seqs,), np.int32)
    mask = np.zeros((n_seqs,), np.float32)
    for s in range(n_seqs):
        seq = seqs[s] if s < len(seqs) else filler
        tokens[s, : len(seq)] = seq
        segs[s, : len(seq)] = 1
        extract[s] = len(seq) - 1
        mask[s] = float(s < len(seqs))
    return {
        "tokens": tokens,
        "segment_ids": segs,
        "extract_pos": extract,
        "seq_mask": mask,
        "label": np.asarray([label], np.int32),
        "task": np.asarray([task], np.int32),
        "weight": np.ones((1,), np.float32),
    }
