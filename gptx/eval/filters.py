"""Named Jinja2 filters that task files may use in their templates: preprocessing a template cannot spell out.

`regex_replace` is lm-evaluation-harness's own filter. The HellaSwag pair reproduces lm-eval's HellaSwag
preprocessing (lm_eval/tasks/hellaswag/utils.py) on the shared file's layout, whose context line is
activity_label + ": " + ctx_a + " " + ctx_b as HellaSwag's `ctx` has it:

    doc_to_text: "{{context | capitalize_ctx_b | hellaswag_preprocess}}"
    doc_to_choice: "{{endings | map('hellaswag_preprocess') | list}}"
"""

from __future__ import annotations

import re
from collections.abc import Callable

# ctx_b, the start of the sentence an ending completes: lowercase text after the context's last sentence end
_CTX_B = re.compile(r"^(.*[.!?])\s+([a-z][^.!?]*)$", re.S)


def regex_replace(text: str, pattern: str, replacement: str, count: int = 0) -> str:
    """lm-evaluation-harness's `regex_replace` filter: re.sub(pattern, replacement, text, count=count)."""
    return re.sub(pattern, replacement, text, count=count)


def capitalize_ctx_b(text: str) -> str:
    """lm-evaluation-harness builds a HellaSwag context as ctx_a + " " + ctx_b.capitalize(); the shared file
    holds activity_label + ": " + ctx_a + " " + ctx_b, uncapitalised. ctx_b is the text after ctx_a's last
    sentence end when it starts in lowercase ("... on a roof. he" -> "... on a roof. He"); str.capitalize also
    lowercases the rest of it, as lm-eval's does. Without the JSON's ctx_a/ctx_b this is an inference: it changes
    3,236 of the 10,042 validation contexts, the third the JSON's ctx_b affects."""
    m = _CTX_B.match(text)
    return f"{m.group(1)} {m.group(2).capitalize()}" if m else text


def hellaswag_preprocess(text: str) -> str:
    """lm-evaluation-harness's HellaSwag `preprocess`: WikiHow's " [title]" becomes ". ", other [tags] go,
    double spaces become one."""
    text = text.strip().replace(" [title]", ". ")
    return re.sub(r"\[.*?\]", "", text).replace("  ", " ")


FILTERS: dict[str, Callable[..., str]] = {
    "regex_replace": regex_replace,
    "capitalize_ctx_b": capitalize_ctx_b,
    "hellaswag_preprocess": hellaswag_preprocess,
}
