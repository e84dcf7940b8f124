"""GPT-2 is evaluated the way lm-evaluation-harness evaluates it: a random-weight GPT2LMHeadModel with GPT-2's
real 50,257-token vocabulary, imported into a gptx workdir and scored by the `eval` command's LM, gives the
per-request log-likelihoods, greedy flags, acc and acc_norm of lm-eval's own Hugging Face backend (HFLM) on the
same model, for contexts ending in spaces, newlines, blank lines and tabs and for empty contexts, and the same
rolling log-likelihoods. The reference is always lm-eval run here, never numbers written into the test."""

import json

import numpy as np
import pytest
from conftest import SHARED_DATA, load_config

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("lm_eval", reason="lm-evaluation-harness is the optional `lm_eval` extra")
pytest.importorskip("accelerate", reason="lm-evaluation-harness's Hugging Face backend needs accelerate (lm_eval[hf])")
from test_interop import hf_model, save  # noqa: E402

from gptx.data import tokenizer as tokenizer_lib  # noqa: E402
from gptx.eval import command, harness, taskfile  # noqa: E402
from gptx.eval import tasks as T  # noqa: E402
from gptx.eval.requests import ContextPrefix  # noqa: E402
from gptx.interop import workdir as convert  # noqa: E402

GPT2_TOKENIZER = SHARED_DATA / "gpt2_tokenizer"
HELLASWAG = taskfile.get("hellaswag")
pytestmark = pytest.mark.skipif(
    not (GPT2_TOKENIZER / "vocab.json").exists() or not (SHARED_DATA / HELLASWAG.test).exists(),
    reason=f"GPT-2's tokenizer files or HellaSwag not found under the shared data sets ({SHARED_DATA})",
)
CTX = 128  # the model's n_positions: rolling texts below span several windows
ENDINGS = ("", " ", "\n", "\n\n", "\t", " \n")  # what a context may end with; all of it moves to the answer
N_HELLASWAG = 5  # HellaSwag docs, each asked with every context ending


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(HF model, HF tokenizer, gptx LM): the same random GPT-2 weights, the LM loaded by `eval` from a workdir
    that `convert` imported them into."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: threads only add contention
    hf_dir = tmp_path_factory.mktemp("hf")
    ref = hf_model("gpt2", n_positions=CTX)  # 2 layers, d 32, 50,257 tokens, <|endoftext|> = 50256
    save(ref, hf_dir)
    hf_tok = transformers.GPT2TokenizerFast.from_pretrained(str(GPT2_TOKENIZER))
    assert len(hf_tok) == 50257  # transformers 5.x can silently build a one-token tokenizer
    hf_tok.save_pretrained(str(hf_dir))
    workdir = str(tmp_path_factory.mktemp("workdir"))
    cfg = load_config("eval", "gpt2:124m")
    cfg.mesh.update(data=-1, fsdp=1, tensor=1)
    cfg.eval.batch_size = 8
    cfg, _ = convert.import_checkpoint(cfg, str(hf_dir), workdir)
    if tokenizer_lib.find(workdir) is None:  # convert may not copy the tokenizer files
        cfg.data.tokenizer = str(GPT2_TOKENIZER)
    lm = command.load_lm(cfg, workdir)
    yield ref, hf_tok, lm
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def hflm(models):
    from lm_eval.models.huggingface import HFLM

    ref, hf_tok, _ = models
    hflm = HFLM(pretrained=ref, tokenizer=hf_tok, batch_size=8, device="cpu")
    assert hflm.max_length == CTX  # from the model's n_positions, as gptx's block_size
    return hflm


def choice_docs(ref, hf_tok) -> list[dict]:
    """HellaSwag's first docs with each context ending, two of them with an empty context, and two docs whose
    first choice is the model's own greedy next word (so that is_greedy is compared both ways)."""
    contexts = hellaswag_contexts(40)
    data = harness.load_task(HELLASWAG, str(SHARED_DATA), 40)
    answers = [{"choices": HELLASWAG.choice_texts(d), "label": HELLASWAG.gold_index(d)} for _, d in data.docs]
    docs = [{"q": c + e, **a} for c, a in list(zip(contexts, answers, strict=True))[:N_HELLASWAG] for e in ENDINGS]
    docs += [{"q": "", **a} for a in answers[:2]]
    greedy = [g for c in contexts[N_HELLASWAG:] if (g := greedy_word(ref, hf_tok, c))]
    assert len(greedy) >= 2, "no context whose greedy next token is a word: pick other contexts"
    return docs + [{"q": ctx, "choices": ["and then some", word], "label": 1} for ctx, word in greedy[:2]]


def hellaswag_contexts(n: int) -> list[str]:
    """The first n HellaSwag contexts as the task file renders them."""
    return [HELLASWAG.render_context(d) for _, d in harness.load_task(HELLASWAG, str(SHARED_DATA), n).docs]


def greedy_word(ref, hf_tok, context: str) -> tuple[str, str] | None:
    """(context, w) when the model's greedy next token after the context is " w", a token that " w" encodes to
    in running text (lm-eval's target delimiter puts the space back)."""
    ids = hf_tok.encode(context)
    with torch.no_grad():
        token = int(ref(torch.as_tensor([ids])).logits[0, -1].argmax())
    piece = hf_tok.decode([token])
    if (
        piece.startswith(" ")
        and piece[1:].strip() == piece[1:] != ""
        and hf_tok.encode(context + piece) == [*ids, token]
    ):
        return context, piece[1:]
    return None


def lm_eval_task(tmp_path, docs: list[dict]):
    """The docs as a local lm-eval multiple-choice task (context = q as it is, lm-eval's " " target delimiter)."""
    from lm_eval.tasks import TaskManager

    (tmp_path / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (tmp_path / "mc.yaml").write_text(
        "task: gptx_gpt2_mc\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {tmp_path / 'docs.jsonl'}\ntest_split: test\noutput_type: multiple_choice\n"
        "doc_to_text: q\ndoc_to_choice: choices\ndoc_to_target: label\n"
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\n"
    )
    return TaskManager(include_path=str(tmp_path), include_defaults=False)


def record_loglikelihoods(lm, monkeypatch) -> dict:
    """Wraps lm.loglikelihood to keep every (context, continuation) request and its score."""
    seen: dict[tuple[str, str], object] = {}
    inner = lm.loglikelihood

    def loglikelihood(requests):
        scores = inner(requests)
        seen.update(zip(requests, scores, strict=True))
        return scores

    monkeypatch.setattr(lm, "loglikelihood", loglikelihood)
    return seen


def test_auto_prefix_is_lm_evals_gpt2_convention(models):
    _, _, lm = models
    assert lm.tokenizer.add_bos is False and lm.max_len == CTX
    assert lm.prefix == ContextPrefix(context=(), start=(50256,))  # no BOS; <|endoftext|> before empty contexts


def test_multiple_choice_scores_and_accuracies_equal_lm_evals_hf_backend(models, hflm, tmp_path, monkeypatch):
    import lm_eval

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    ref, hf_tok, lm = models
    docs = choice_docs(ref, hf_tok)
    theirs = lm_eval.simple_evaluate(
        model=hflm, tasks=["gptx_gpt2_mc"], num_fewshot=0, task_manager=lm_eval_task(tmp_path, docs), log_samples=True
    )
    task = T.Task("mc", T.CHOICE, "unused", "jsonl", context="{q}", choices="choices", metrics=("acc", "acc_norm"))
    seen = record_loglikelihoods(lm, monkeypatch)
    ours = harness.evaluate_task(lm, harness.TaskData(task, list(enumerate(docs)), docs, True, {}), [0])[0]
    samples = sorted(theirs["samples"]["gptx_gpt2_mc"], key=lambda s: s["doc_id"])
    assert len(samples) == len(docs) == ours["n"]
    pairs, want, got = set(), [], []
    for s in samples:
        for args, (logprob, is_greedy) in zip(s["arguments"], s["filtered_resps"], strict=True):
            pair = (args[0], args[1])  # lm-eval's own request, which gptx's harness made too
            pairs.add(pair)
            want.append((logprob, is_greedy))
            got.append((seen[pair].logprob, seen[pair].is_greedy))
    contexts = {c for c, _ in pairs}  # lm-eval asked for every kind of context ending, and for empty ones
    assert "" in contexts and all(any(c.endswith(e) for c in contexts if c) for e in ENDINGS)
    np.testing.assert_allclose([g for g, _ in got], [w for w, _ in want], atol=1e-4, rtol=0)
    assert [g for _, g in got] == [bool(w) for _, w in want] and {g for _, g in got} == {True, False}
    res = theirs["results"]["gptx_gpt2_mc"]
    assert (ours["acc"], ours["acc_norm"]) == (res["acc,none"], res["acc_norm,none"])


def test_rolling_loglikelihoods_equal_lm_evals_hf_backend(models, hflm):
    from lm_eval.api.instance import Instance

    _, hf_tok, lm = models
    contexts = hellaswag_contexts(12)
    texts = [*contexts[:3], "\n" + contexts[3]]
    texts.append(" ".join(contexts))  # several windows of 128 tokens
    assert len(hf_tok.encode(texts[-1])) > 2 * CTX
    instances = [Instance("loglikelihood_rolling", {}, (t,), i) for i, t in enumerate(texts)]
    want = hflm.loglikelihood_rolling(instances)
    got = [r.logprob for r in lm.loglikelihood_rolling(texts)]
    # A sum over hundreds of tokens: float32 rounding of each term, hence the relative part.
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-7)
