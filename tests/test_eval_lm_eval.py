"""lm-evaluation-harness adapter: its three request types on lm-eval's own Instance objects, windows laid out by
lm-eval's own helper, and (slow) a local lm-eval task whose accuracies equal gptx's harness on the same docs."""

import json

import jax
import numpy as np
import pytest
from conftest import tiny_config

pytest.importorskip("lm_eval", reason="lm-evaluation-harness is the optional `lm_eval` extra")
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window  # noqa: E402

from gptx import mesh as mesh_lib  # noqa: E402
from gptx.data import sources  # noqa: E402
from gptx.data import tokenizer as tokenizer_lib  # noqa: E402
from gptx.eval import harness  # noqa: E402
from gptx.eval import tasks as T  # noqa: E402
from gptx.eval.lm_eval_adapter import GptxLM  # noqa: E402
from gptx.eval.requests import LM  # noqa: E402
from gptx.models import GPT, GPTConfig  # noqa: E402

CTX = 32


@pytest.fixture(scope="module")
def parts():
    tok = tokenizer_lib.train([sources.read_text("bundled:tinyshakespeare")[:200_000]], 512)
    model = GPT(GPTConfig.from_config(tiny_config(vocab_size=512, block_size=CTX).model))
    boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros((1, 8), np.int32))["params"])
    rng = np.random.default_rng(5)
    params = jax.tree.map(lambda s: rng.normal(0, 0.3, s.shape).astype(s.dtype), mesh_lib.strip_annotations(boxed))
    return tok, model, params, GptxLM(lm=LM(model, params, tok, batch_size=4), max_gen_toks=10)


def instances(kind: str, args: list[tuple]) -> list[Instance]:
    return [Instance(kind, {}, a, i, ("t", i, 1)) for i, a in enumerate(args)]


def token_logprobs(model, params, tokens: list[int]) -> np.ndarray:
    """log P(tokens[i] | tokens[:i]), i >= 1, from one full forward pass (the brute-force reference); the row is
    right-padded to the context, which causal attention ignores."""
    forward = _forward(model)
    logits = np.asarray(forward(params, np.asarray([tokens[:-1] + [0] * (CTX + 1 - len(tokens))], np.int32))[0])
    logp = np.asarray(jax.nn.log_softmax(logits.astype(np.float64), axis=-1))[: len(tokens) - 1]
    return logp[np.arange(len(tokens) - 1), tokens[1:]]


_FORWARDS = {}


def _forward(model):
    if model not in _FORWARDS:
        _FORWARDS[model] = jax.jit(lambda p, x: model.apply({"params": p}, x))
    return _FORWARDS[model]


def test_loglikelihood_requests_score_the_continuation_after_bos_and_context(parts):
    tok, model, params, lm = parts
    args = [("ROMEO:\nWhat light", " through yonder"), ("KING:", " Speak"), ("", "To be or not")]
    out = lm.loglikelihood(instances("loglikelihood", args))
    assert all(isinstance(lp, float) and isinstance(g, bool) for lp, g in out) and len(out) == 3
    for (ctx, cont), (lp, _) in zip(args, out, strict=True):
        whole = [tok.bos_id, *tok.encode(ctx + cont)]
        n_cont = len(whole) - 1 - len(tok.encode(ctx))  # tokens after BOS + the context's own tokens
        np.testing.assert_allclose(lp, token_logprobs(model, params, whole)[-n_cont:].sum(), atol=1e-4)


def test_rolling_loglikelihood_uses_lm_evals_own_windows(parts):
    tok, model, params, lm = parts
    text = sources.read_text("bundled:tinyshakespeare")[:400]
    (got,) = lm.loglikelihood_rolling(instances("loglikelihood_rolling", [(text,)]))
    tokens = tok.encode(text)
    assert len(tokens) > 3 * CTX  # several windows
    want = 0.0
    for window in get_rolling_token_windows(tokens, tok.bos_id, CTX, 1):
        ctx, cont = make_disjoint_window(window)
        want += token_logprobs(model, params, [*ctx, *cont])[-len(cont) :].sum()
    np.testing.assert_allclose(got, want, atol=1e-3)


def test_generate_until_stops_at_until_after_max_gen_toks_greedy_tokens(parts):
    tok, model, params, lm = parts
    free = lm.generate_until(instances("generate_until", [("ROMEO:\n", {"until": [], "max_gen_toks": 10})]))[0]
    assert free == lm.lm.generate_until([("ROMEO:\n", ())], 10)[0]
    stop = free[3:5]
    args = [("ROMEO:\n", {"until": [stop], "max_gen_toks": 10}), ("ROMEO:\n", {"until": stop})]  # default 10 tokens
    cut, also_cut = lm.generate_until(instances("generate_until", args))
    assert cut == also_cut == free[: free.find(stop)]


@pytest.mark.slow
def test_a_local_lm_eval_task_scores_like_the_gptx_harness(parts, tmp_path, monkeypatch):
    """lm-eval's own simple_evaluate, offline, on a local multiple-choice task: its acc and acc_norm equal those
    of gptx's harness on the same documents and template."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import lm_eval
    from lm_eval.tasks import TaskManager

    words = ["king", "queen", "sword", "crown", "night", "love", "death", "grace"]
    rng = np.random.default_rng(0)
    docs = [{"q": f"Which word is {i}?", "choices": list(rng.choice(words, 3, replace=False)), "label": i % 3}
            for i in range(24)]  # fmt: skip
    (tmp_path / "toy.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (tmp_path / "toy.yaml").write_text(
        "task: gptx_toy\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {tmp_path / 'toy.jsonl'}\ntest_split: test\noutput_type: multiple_choice\n"
        'doc_to_text: "{{q}}\\nAnswer:"\ndoc_to_choice: choices\ndoc_to_target: label\n'
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\n"
    )
    tok, model, params, lm = parts
    out = lm_eval.simple_evaluate(
        model=lm,
        tasks=["gptx_toy"],
        num_fewshot=0,
        task_manager=TaskManager(include_path=str(tmp_path), include_defaults=False),
    )
    theirs = out["results"]["gptx_toy"]
    task = T.Task(
        "toy", T.CHOICE, "unused", "jsonl", context="{q}\nAnswer:", choices="choices", metrics=("acc", "acc_norm")
    )
    ours = harness.evaluate_task(lm.lm, harness.TaskData(task, list(enumerate(docs)), docs, True, {}), [0])[0]
    assert theirs["acc,none"] == ours["acc"] and theirs["acc_norm,none"] == ours["acc_norm"]
    assert ours["n"] == 24
