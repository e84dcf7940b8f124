"""lm-evaluation-harness adapter: any lm-eval task on a gptx checkpoint (`pip install gptx[lm_eval]`).

    import lm_eval
    from gptx.eval.lm_eval_adapter import GptxLM
    lm = GptxLM(workdir="/tmp/gptx_demo/pretrain", config="configs/eval.py:demo")
    lm_eval.simple_evaluate(model=lm, tasks=["hellaswag"], num_fewshot=0)

or lm-eval's own command line with the model registered as "gptx":

    python -m gptx.eval.lm_eval_adapter run --model gptx \
        --model_args workdir=/tmp/gptx_demo/pretrain,config=configs/eval.py:demo --tasks lambada_openai

The three request types map onto gptx.eval.requests.LM, which batches them (sorted by length, deduplicated)
and conditions them on the model's own prefix (config.eval.context_prefix): BOS for gptx-trained models, which
saw it at the start of every document; for GPT-2, lm-eval's Hugging Face backend's convention (no BOS, and
<|endoftext|> before an empty context or a rolling text).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import Any

from lm_eval.api.model import LM as _LMBase
from lm_eval.api.registry import register_model

from gptx.data import paths
from gptx.eval.requests import LM


def load_config(spec: str):
    """A gptx config from `path/to/config.py[:ARG]` (relative paths from the repository root if not found)."""
    path, _, arg = spec.partition(":")
    if not os.path.exists(path):
        path = paths.from_repo(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"config file {spec} not found")
    module_spec = importlib.util.spec_from_file_location("gptx_lm_eval_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()


@register_model("gptx")
class GptxLM(_LMBase):
    """lm-eval's LM interface over a gptx model.

    Build it from a checkpoint workdir and a config (`workdir=`, `config=`, optional `batch_size=`), or wrap an
    existing gptx.eval.requests.LM with `lm=`. `rolling_stride` sets the perplexity windows (0: lm-eval's
    disjoint windows, the last one with a full context); `context_prefix` overrides config.eval.context_prefix.
    """

    def __init__(
        self,
        workdir: str | None = None,
        config: str = "configs/eval.py",
        batch_size: int | str | None = None,
        lm: LM | None = None,
        rolling_stride: int = 0,
        max_gen_toks: int = 256,
        context_prefix: str | None = None,
        **unused: Any,  # lm-eval passes device / max_batch_size, which gptx takes from its config
    ):
        super().__init__()
        if lm is None:
            if workdir is None:
                raise ValueError("GptxLM needs workdir= (a gptx checkpoint workdir) or lm=")
            from gptx.eval import command

            cfg = load_config(config)
            if batch_size not in (None, "", "auto"):
                cfg.eval.batch_size = int(batch_size)
            if context_prefix:
                cfg.eval.context_prefix = context_prefix
            lm = command.load_lm(cfg, workdir)
        self.lm = lm
        self.rolling_stride = int(rolling_stride)
        self.max_gen_toks = int(max_gen_toks)

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        """Instance.args = (context, continuation) -> (log P(continuation | context), is_greedy)."""
        scores = self.lm.loglikelihood([tuple(r.args[:2]) for r in requests])
        return [(s.logprob, s.is_greedy) for s in scores]

    def loglikelihood_rolling(self, requests) -> list[float]:
        """Instance.args = (text,) -> log P(text | prefix token), over windows when longer than the context."""
        return [r.logprob for r in self.lm.loglikelihood_rolling([r.args[0] for r in requests], self.rolling_stride)]

    def generate_until(self, requests) -> list[str]:
        """Instance.args = (context, gen_kwargs): greedy until any of gen_kwargs["until"] or max_gen_toks tokens.

        Requests with the same generation settings run together; sampling settings (do_sample, temperature)
        other than greedy are honoured through the temperature only.
        """
        groups: dict[tuple[int, float], list[tuple[int, str, tuple[str, ...]]]] = {}
        for i, r in enumerate(requests):
            kw = dict(r.args[1]) if len(r.args) > 1 and r.args[1] else {}
            until = kw.get("until", [])
            until = (until,) if isinstance(until, str) else tuple(until)
            max_new = min(int(kw.get("max_gen_toks", self.max_gen_toks)), self.lm.max_len - 1)
            temperature = float(kw.get("temperature", 0.0)) if kw.get("do_sample", False) else 0.0
            groups.setdefault((max_new, temperature), []).append((i, r.args[0], until))
        out = [""] * len(requests)
        for (max_new, temperature), items in groups.items():
            texts = self.lm.generate_until([(ctx, until) for _, ctx, until in items], max_new, temperature=temperature)
            for (i, _, _), text in zip(items, texts, strict=True):
                out[i] = text
        return out

    @property
    def tokenizer_name(self) -> str:
        # lm-eval keys its request cache on this name.
        return f"gptx-{getattr(self.lm.tokenizer, 'kind', 'sentencepiece')}"


if __name__ == "__main__":
    # lm-eval's own command line, with "gptx" registered as a model.
    from lm_eval.__main__ import cli_evaluate

    sys.exit(cli_evaluate())
