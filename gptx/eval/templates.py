"""Jinja2 prompt templates, rendered as lm-evaluation-harness renders a task file's doc_to_text/choice/target.

The environment is lm-eval's (`lm_eval.utils.env`): StrictUndefined (a missing field is an error, so the record
is reported malformed, not rendered with a blank), trailing newlines kept, its `regex_replace` filter, and the
named filters of gptx/eval/filters.py (preprocessing such as HellaSwag's).
"""

from __future__ import annotations

import ast
import functools
from typing import Any

import jinja2

from gptx.eval.filters import FILTERS

TemplateError = jinja2.TemplateError


@functools.cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.BaseLoader(), undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    env.filters.update(FILTERS)
    return env


@functools.lru_cache(maxsize=1024)
def _compile(template: str) -> jinja2.Template:
    return _environment().from_string(template)


def render(template: str, doc: dict[str, Any]) -> str:
    return _compile(template).render(**doc)


def render_list(template: str, doc: dict[str, Any]) -> list[Any]:
    """A template that renders a Python list literal ("{{[ending1, ending2]}}"), as lm-eval's doc_to_choice."""
    value = ast.literal_eval(render(template, doc))
    if not isinstance(value, list | tuple):
        raise TypeError(f"template {template!r} gives {type(value).__name__}, not a list")
    return list(value)
