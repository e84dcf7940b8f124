"""Tasks as files: a YAML or JSON file defines a task (or a group of tasks) without any Python.

    task: storycloze_mini                # the name results are reported under
    output_type: multiple_choice         # or kind: choice | completion | generate | perplexity | code
    test: storycloze_test.csv            # data file; relative to this file, else to config.eval.data_dir
    fewshot: storycloze_val.csv          # optional: demonstrations (default: the test file minus the test doc)
    format: csv                          # jsonl | json | csv | tsv | text (default: from the name; .gz/.xz/.bz2)
                                         # or a named reader of tasks.READERS (hellaswag, corpus_val, ...)
    quoting: none                        # CSV/TSV: quote characters are text (default: minimal, as Python's csv)
    process: gsm8k                       # optional: a named processor of tasks.PROCESSORS
    fields: [sentence_quiz1]             # optional: a record without these is malformed
    doc_to_text: "{{[s1, s2] | join(' ')}}"   # Jinja2, as lm-eval; a field's name stands for that field
    doc_to_choice: "{{[sentence_quiz1, sentence_quiz2]}}"   # a list template, a field, or a list of templates
    doc_to_target: "{{answer_right_ending - 1}}"            # gold index or text (choice), answer (others)
    description: ""                      # before the demonstrations
    target_delimiter: " "                # between a context and its answer
    fewshot_delimiter: "\n\n"            # between demonstrations
    fewshot_config: {sampler: first_n}   # the first K of the few-shot pool (default: a seeded draw per doc)
    metric_list: [acc, acc_norm]         # or lm-eval's [{metric: acc}, ...]; default: all of the kind's
    generation_kwargs: {until: ["\n"], max_gen_toks: 32}    # generate / code tasks
    code: {format: humaneval, samples: 10, temperature: 0.8, top_p: 0.95, pass_k: [1, 10]}   # code tasks

A group file: `group: NAME` and `task: [names or task files]`. `config.eval.tasks` takes built-in task names,
group names and task/group file paths, comma-separated. Built-in task and group files live in gptx/eval/builtin.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import json
import os
from typing import Any

import yaml

from gptx.data.sources import DataError
from gptx.eval import code
from gptx.eval import tasks as T
from gptx.eval.metrics import Normalization

OUTPUT_TYPES = {  # lm-evaluation-harness's names of the request kinds
    "multiple_choice": T.CHOICE,
    "loglikelihood": T.COMPLETION,
    "generate_until": T.GENERATE,
    "loglikelihood_rolling": T.PERPLEXITY,
}
KEYS = {
    "task", "output_type", "kind", "test", "fewshot", "format", "fields", "process", "doc_to_text", "doc_to_choice",
    "doc_to_target", "gold", "description", "target_delimiter", "fewshot_delimiter", "metric_list", "metrics",
    "generation_kwargs", "answer_context", "extract", "extract_fallback", "normalization", "code", "note",
    "fewshot_config", "quoting",
}  # fmt: skip
GENERATION_KEYS = {"until", "max_gen_toks", "max_new_tokens", "temperature", "top_p", "do_sample"}
CODE_KEYS = {"format", "samples", "temperature", "top_p", "pass_k"}
SUFFIXES = (".yaml", ".yml", ".json")


def read(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        spec = json.load(f) if path.endswith(".json") else yaml.safe_load(f)
    if not isinstance(spec, dict) or not ("task" in spec or "group" in spec):
        raise DataError(f"{path}: a task file is a mapping with `task` (or `group` and `task: [...]`)")
    return spec


def _data_path(value: str, base: str) -> str:
    """A data file named in a task file: beside the task file when it is there, else for tasks.resolve."""
    if ":" in value.split("/")[0] or os.path.isabs(value):
        return value
    beside = os.path.join(base, value)
    return os.path.abspath(beside) if os.path.exists(beside) else value


def task_from_spec(spec: dict[str, Any], path: str) -> T.Task:
    """The Task a task file defines; DataError naming the file and key for anything it cannot use."""
    unknown = sorted(set(spec) - KEYS)
    if unknown:
        raise DataError(f"{path}: unknown key(s) {unknown}; a task file's keys: {', '.join(sorted(KEYS))}")
    for key in ("task", "test"):
        if key not in spec:
            raise DataError(f"{path}: missing key `{key}`")
    kind = spec.get("kind") or OUTPUT_TYPES.get(spec.get("output_type", ""), spec.get("output_type", ""))
    base = os.path.dirname(os.path.abspath(path))
    gen = dict(spec.get("generation_kwargs") or {})
    cod = dict(spec.get("code") or {})
    for name, given, allowed in (("generation_kwargs", gen, GENERATION_KEYS), ("code", cod, CODE_KEYS)):
        if set(given) - allowed:
            raise DataError(f"{path}: unknown {name} key(s) {sorted(set(given) - allowed)}; allowed: {sorted(allowed)}")
    args: dict[str, Any] = dict(
        name=str(spec["task"]), kind=kind, test=_data_path(str(spec["test"]), base), reader=spec.get("format", "auto"),
        fewshot=_data_path(str(spec["fewshot"]), base) if spec.get("fewshot") else None, process=spec.get("process"),
        fields=tuple(spec.get("fields", ())), syntax="jinja", description=spec.get("description", ""),
        note=spec.get("note", f"task file {path}"),
        fewshot_sampler=(spec.get("fewshot_config") or {}).get("sampler", "random"),
        quoting=str(spec.get("quoting", "minimal")),
    )  # fmt: skip
    for key, field in (("doc_to_text", "context"), ("gold", "gold"), ("answer_context", "answer_context")):
        if key in spec:
            args[field] = str(spec[key])
    for key in ("target_delimiter", "fewshot_delimiter", "extract", "extract_fallback"):
        if key in spec:
            args[key] = str(spec[key])
    if "doc_to_target" in spec:
        args["label" if kind == T.CHOICE else "target"] = str(spec["doc_to_target"])
    if "doc_to_choice" in spec:
        choices = spec["doc_to_choice"]
        args["choices"] = tuple(map(str, choices)) if isinstance(choices, list) else str(choices)
    metrics = spec.get("metric_list", spec.get("metrics", ()))
    args["metrics"] = tuple(m["metric"] if isinstance(m, dict) else str(m) for m in metrics)
    if "until" in gen:
        args["until"] = tuple(gen["until"]) if isinstance(gen["until"], list) else (str(gen["until"]),)
    if "max_gen_toks" in gen or "max_new_tokens" in gen:
        args["max_new_tokens"] = int(gen.get("max_gen_toks", gen.get("max_new_tokens")))
    if "normalization" in spec:
        norm = dict(spec["normalization"])
        norm["regexes_to_ignore"] = tuple(norm.get("regexes_to_ignore", ()))
        args["normalization"] = Normalization(**norm)
    if kind == T.CODE:
        args.update(
            program_format=cod.get("format", ""), samples=int(cod.get("samples", 1)),
            temperature=float(cod.get("temperature", gen.get("temperature", 0.0))),
            top_p=float(cod.get("top_p", gen.get("top_p", 1.0))), pass_k=tuple(int(k) for k in cod.get("pass_k", [1])),
        )  # fmt: skip
        args["fields"] = args["fields"] or code.FIELDS.get(args["program_format"], ())
        args.setdefault("target", "{{canonical_solution}}" if args["program_format"] == code.HUMANEVAL else "{{code}}")
    try:
        return T.Task(**args)
    except (ValueError, TypeError) as e:
        raise DataError(f"{path}: {e}") from None


def load(path: str) -> list[T.Task]:
    """The tasks of a task file (one) or a group file (its members, recursively)."""
    spec = read(path)
    if "group" not in spec:
        return [task_from_spec(spec, path)]
    members = spec.get("task")
    if not isinstance(members, list) or not members:
        raise DataError(f"{path}: group {spec['group']!r} needs `task: [names or task files]`")
    base = os.path.dirname(os.path.abspath(path))
    out: list[T.Task] = []
    for m in members:
        beside = os.path.join(base, str(m))
        out += resolve(beside if str(m).endswith(SUFFIXES) and os.path.exists(beside) else str(m))
    return out


@functools.cache
def builtin_files() -> dict[str, str]:
    """{name: path} of the task and group files shipped in gptx/eval/builtin (read once: package data)."""
    folder = importlib.resources.files("gptx.eval") / "builtin"
    out = {}
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(SUFFIXES):
            spec = read(str(entry))
            out[str(spec.get("group") or spec["task"])] = str(entry)
    return out


def resolve(entry: str) -> list[T.Task]:
    """The tasks one entry of config.eval.tasks names: a task or group file, a built-in task or group."""
    if entry.endswith(SUFFIXES):
        if not os.path.exists(entry):
            raise DataError(f"task file {entry} not found")
        return load(entry)
    files = builtin_files()
    if entry in files:
        return load(files[entry])
    known = sorted(files)
    raise DataError(f"unknown eval task {entry!r}: not a task file, a group or one of {', '.join(known)}")


def get(name: str) -> T.Task:
    """One built-in task by name (a task file of gptx/eval/builtin), or the task of a task file."""
    tasks = resolve(name)
    if len(tasks) != 1:
        raise DataError(f"{name!r} is a group of {len(tasks)} tasks, not one task")
    return tasks[0]


def resolve_all(entries: list[str]) -> list[T.Task]:
    """Tasks of every entry, each once (first occurrence), in order; two different tasks may not share a name."""
    out: dict[str, T.Task] = {}
    for entry in entries:
        for task in resolve(entry):
            if task.name in out and dataclasses.astuple(out[task.name]) != dataclasses.astuple(task):
                raise DataError(f"two different tasks are named {task.name!r} (from {entry!r})")
            out.setdefault(task.name, task)
    return list(out.values())
