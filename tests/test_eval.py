"""The harness's model requests: log-likelihoods equal those of Hugging Face transformers holding the same
weights, rolling windows equal brute-force per-token sums, scores do not depend on the batch size, and greedy
generation equals a brute-force argmax loop."""

import re
from types import SimpleNamespace

import jax
import numpy as np
import pytest
from conftest import tiny_config

from gptx import mesh as mesh_lib
from gptx.data import sources
from gptx.data import tokenizer as tokenizer_lib
from gptx.eval import harness
from gptx.eval import tasks as T
from gptx.eval.requests import LM, ContextPrefix, rolling_windows, split_pair, with_prefix
from gptx.interop import hf
from gptx.models import GPT, GPTConfig

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
from test_interop import hf_model, save  # noqa: E402

VOCAB, CTX = 500, 16


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A random GPT2LMHeadModel (context 16) and the gptx GPT holding its weights."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: threads only add contention
    ref = hf_model("gpt2", vocab_size=VOCAB, n_positions=CTX)
    m, params, _ = hf.load_hf(save(ref, tmp_path_factory.mktemp("hf")), tiny_config().model)
    yield ref, GPT(GPTConfig.from_config(m)), params
    torch.set_num_threads(threads)


def hf_token_logprobs(ref, tokens) -> np.ndarray:
    """log P(tokens[i] | tokens[:i]) for i >= 1, by transformers."""
    with torch.no_grad():
        logits = ref(torch.as_tensor([tokens[:-1]])).logits[0]
    logp = torch.log_softmax(logits.double(), -1).numpy()
    return logp[np.arange(len(tokens) - 1), tokens[1:]]


def hf_loglikelihood(ref, ctx, cont) -> tuple[float, bool]:
    row = (list(ctx) + list(cont))[-(CTX + 1) :]  # the context loses tokens on the left, as in lm-eval
    with torch.no_grad():
        logits = ref(torch.as_tensor([row[:-1]])).logits[0, -len(cont) :]
    logp = torch.log_softmax(logits.double(), -1)
    target = torch.as_tensor(cont)
    return float(logp[torch.arange(len(cont)), target].sum()), bool((logits.argmax(-1) == target).all())


def hf_greedy(ref, ctx, n) -> list[int]:
    toks = list(ctx)
    for _ in range(n):
        with torch.no_grad():
            toks.append(int(ref(torch.as_tensor([toks[-CTX:]])).logits[0, -1].argmax()))
    return toks[len(ctx) :]


def test_loglikelihoods_equal_transformers_with_the_same_weights(reference):
    ref, model, params = reference
    rng = np.random.default_rng(0)
    requests = []
    for i, (n_ctx, n_cont) in enumerate([(1, 1), (5, 3), (12, 4), (3, 13), (30, 16), (7, 2), (20, 2), (2, 6)]):
        ctx = rng.integers(0, VOCAB, n_ctx).tolist()
        # Half the continuations are the model's own greedy ones, so is_greedy is tested both ways.
        cont = hf_greedy(ref, ctx, n_cont) if i % 2 else rng.integers(0, VOCAB, n_cont).tolist()
        requests.append((ctx, cont))
    got = LM(model, params, batch_size=3, prefix_ids=[]).loglikelihood_tokens(requests)
    want = [hf_loglikelihood(ref, c, x) for c, x in requests]
    np.testing.assert_allclose([g.logprob for g in got], [w[0] for w in want], atol=1e-4, rtol=0)
    assert [g.is_greedy for g in got] == [w[1] for w in want]
    assert [g.is_greedy for g in got[1::2]] == [True] * 4  # the model's own greedy continuations
    assert [g.n_tokens for g in got] == [len(x) for _, x in requests]


def brute_force_rolling(ref, tokens, prefix, stride) -> float:
    """Sum over tokens of log P(token | its context) with the context spelled out per token:
    stride 1: the CTX tokens before it; stride CTX: the tokens since the start of its block of CTX predictions,
    except that the last, partial block sees the CTX tokens before its end (lm-eval's layout)."""
    full, n, total = [prefix, *tokens], len(tokens), 0.0
    for j in range(1, n + 1):
        if stride == 1:
            start = max(0, j - CTX)
        else:
            block = (j - 1) // CTX
            last_partial = block == (n - 1) // CTX and n % CTX and n > CTX
            start = max(0, n - CTX) if last_partial else block * CTX
        total += hf_token_logprobs(ref, full[start : j + 1])[-1]
    return total


@pytest.mark.parametrize("stride", [1, CTX])
def test_rolling_loglikelihood_over_windows_equals_the_brute_force_sum(reference, stride):
    ref, model, params = reference
    rng = np.random.default_rng(1)
    long, short = rng.integers(4, VOCAB, 45).tolist(), rng.integers(4, VOCAB, 9).tolist()
    lm = LM(model, params, batch_size=3, prefix_ids=[1])
    got = lm.rolling_tokens([long, short], stride=stride)
    np.testing.assert_allclose(got[0], brute_force_rolling(ref, long, 1, stride), atol=2e-4, rtol=0)
    # A text that fits the context is one forward pass, whatever the stride.
    np.testing.assert_allclose(got[1], hf_token_logprobs(ref, [1, *short]).sum(), atol=1e-4, rtol=0)


def test_rolling_windows_predict_each_token_once_with_lm_evals_layout():
    # lm-evaluation-harness's docstring example: 10 tokens, context 4.
    assert rolling_windows(10, 4) == [(0, 1, 5), (4, 5, 9), (6, 9, 11)]
    for n, L, s in [(1, 4, 0), (37, 8, 3), (64, 16, 16), (65, 16, 5)]:
        windows = rolling_windows(n, L, s)
        predicted = [t for _, a, b in windows for t in range(a, b)]
        assert predicted == list(range(1, n + 1))
        assert all(b - start <= L + 1 for start, _, b in windows)  # every window fits the context


@pytest.fixture(scope="module")
def tok():
    text = sources.read_text("bundled:tinyshakespeare")[:200_000]
    return tokenizer_lib.train([text], 512)


def random_params(model, seed: int, std: float = 0.3):
    """N(0, std) for every parameter (no init compile): peaked next-token distributions without near-ties."""
    boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros((1, 8), np.int32))["params"])
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: rng.normal(0, std, s.shape).astype(s.dtype), mesh_lib.strip_annotations(boxed))


@pytest.fixture(scope="module")
def tiny_lm_parts(tok):
    model = GPT(GPTConfig.from_config(tiny_config(vocab_size=512, block_size=64).model))
    return model, random_params(model, 3)


def test_split_pair_keeps_the_tokens_of_running_text(tok):
    ctx, cont = split_pair(tok, "Q: What is 98 plus 45?\n\nA:", " 143")
    assert ctx + cont == tok.encode("Q: What is 98 plus 45?\n\nA: 143")
    assert tok.decode(cont) == "143" and len(cont) < len(tok.encode(" 143"))  # no second word-start marker
    ctx, cont = split_pair(tok, "Answer: ", "yes")  # trailing context spaces move to the continuation
    assert ctx == tok.encode("Answer:") and ctx + cont == tok.encode("Answer: yes")


@pytest.mark.parametrize("ending", [" ", "\n", "\n\n", "\t", " \n "])
def test_split_pair_moves_all_trailing_whitespace_to_the_continuation(tok, ending):
    """As lm-evaluation-harness's _encode_pair: the context is cut where the text stops being whitespace."""
    ctx, cont = split_pair(tok, "Answer:" + ending, "yes")
    assert ctx == tok.encode("Answer:") and ctx + cont == tok.encode("Answer:" + ending + "yes")
    assert split_pair(tok, ending, "yes") == ([], tok.encode(ending + "yes"))  # nothing left of the context


def test_context_prefix_follows_the_tokenizers_training_convention():
    gptx_tok = SimpleNamespace(bos_id=1, eos_id=2, pad_id=0, add_bos=True)
    gpt2_tok = SimpleNamespace(bos_id=7, eos_id=7, pad_id=7, add_bos=False)
    assert ContextPrefix.of(gptx_tok) == ContextPrefix(context=(1,), start=(1,))
    assert ContextPrefix.of(gpt2_tok) == ContextPrefix(context=(), start=(7,))  # lm-eval's HF backend on GPT-2
    assert ContextPrefix.of(gptx_tok, "none") == ContextPrefix(context=(), start=(2,))
    assert ContextPrefix.of(gpt2_tok, "bos") == ContextPrefix(context=(7,), start=(7,))
    assert ContextPrefix.of(gptx_tok, "eos") == ContextPrefix(context=(2,), start=(2,))
    with pytest.raises(ValueError, match="expected one of auto, bos, eos, none"):
        ContextPrefix.of(gptx_tok, "BOS")
    assert with_prefix([1], [1, 5]) == [1, 5] and with_prefix([1], [5]) == [1, 5] and with_prefix([], [5]) == [5]


def test_requests_start_with_the_context_prefix(tok, tiny_lm_parts):
    model, params = tiny_lm_parts
    bos, eos = tok.bos_id, tok.eos_id
    auto, none = LM(model, params, tok), LM(model, params, tok, context_prefix="none")
    ctx, cont = split_pair(tok, "KING:", " Speak")
    assert auto.encode_pair("KING:", " Speak") == ([bos, *ctx], cont)  # gptx models saw BOS first
    assert none.encode_pair("KING:", " Speak") == (ctx, cont)
    # An empty context, or one of whitespace only, is conditioned on the start prefix (lm-eval's prefix token).
    assert none.encode_pair("", " Speak") == ([eos], tok.encode(" Speak"))
    assert none.encode_pair("\n", "Speak") == ([eos], tok.encode("\nSpeak"))
    assert auto.encode_pair("", " Speak") == ([bos], tok.encode(" Speak"))
    assert none.prompt_ids("KING:") == tok.encode("KING:") and none.prompt_ids("") == [eos]
    assert auto.count_tokens("KING:") == len(tok.encode("KING:")) + 1


def choice_task() -> T.Task:
    # Short prompts: 0- and 1-shot requests all fall in one length bucket, one compile per batch size.
    return T.Task("toy", T.CHOICE, "unused", "jsonl", context="{q}:", choices="choices", label="label",
                  fewshot_delimiter="\n")  # fmt: skip


def toy_docs() -> list[dict]:
    words = ["king", "queen", "sword", "crown", "night", "love", "death", "grace", "honour", "blood"]
    rng = np.random.default_rng(0)
    docs = []
    for i in range(14):
        pick = rng.choice(len(words), 3, replace=False)
        docs.append({"q": "ABCDEFGHIJKLMN"[i], "choices": [words[j] for j in pick], "label": int(i % 3)})
    return docs


def test_scores_and_metrics_do_not_depend_on_the_batch_size(tok, tiny_lm_parts):
    model, params = tiny_lm_parts
    task = choice_task()
    data = harness.TaskData(task, list(enumerate(toy_docs())), toy_docs(), True, {})
    requests = [(f"{q}:", " " + w) for q in "ABCDEF" for w in ("king", "love", "grace")]
    runs, scores = [], []
    for bs in (1, 4):
        lm = LM(model, params, tok, batch_size=bs)
        assert lm.count_tokens("M: honour\nN: crown") < 16  # the length bucket above
        scores.append([s.logprob for s in lm.loglikelihood(requests)])
        runs.append(harness.evaluate_task(lm, data, [0, 1], seed=7))
    np.testing.assert_allclose(scores[1], scores[0], atol=1e-5, rtol=0)
    for k in (0, 1):
        for metric in ("acc", "acc_norm", "acc_uncond"):
            assert runs[1][k][metric] == runs[0][k][metric], (k, metric)
    assert runs[0][1]["mean_shots"] == 1.0 and runs[0][0]["n"] == 14


def test_a_progress_bar_counts_the_batches_of_a_call(tok, tiny_lm_parts, capsys):
    model, params = tiny_lm_parts
    requests = [(f"{q}:", " king") for q in "ABCDEF"]  # 6 requests, 3 batches of 2
    LM(model, params, tok, batch_size=2).loglikelihood(requests)
    assert "log-likelihoods" not in capsys.readouterr().err  # off unless asked (config.train.progress)
    LM(model, params, tok, batch_size=2, progress=True).loglikelihood(requests)
    err = capsys.readouterr().err
    assert "log-likelihoods" in err and "0/3" in err  # a bar over the 3 batches (cleared when done)


def test_generate_until_is_greedy_decoding_cut_at_the_stop_string(tok, tiny_lm_parts):
    model, params = tiny_lm_parts
    lm = LM(model, params, tok, batch_size=2)
    prompts = ["ROMEO:\nWhat light", "JULIET:\nO Romeo", "KING:\nNo"]  # one width bucket: one compile
    n_new = 12
    forward = jax.jit(lambda x: model.apply({"params": params}, x))
    for prompt in prompts:
        ids = [tok.bos_id, *tok.encode(prompt)]
        new = []
        for _ in range(n_new):  # brute force: a full forward pass per token (right padding: causal attention)
            row = ids + new
            logits = forward(np.asarray([row + [0] * (64 - len(row))], np.int32))[0, len(row) - 1]
            new.append(int(np.argmax(logits)))
            if new[-1] == tok.eos_id:
                break
        text = tok.decode(ids + new)[len(tok.decode(ids)) :]
        assert lm.generate_until([(prompt, ())], n_new) == [text]
        stop = text[4:6]
        if stop.strip():
            assert lm.generate_until([(prompt, (stop,))], n_new) == [text[: text.find(stop)]]
    # Batched with different stop strings, the same answers as one by one.
    batch = lm.generate_until([(p, ("\n",)) for p in prompts], n_new)
    assert batch == [lm.generate_until([(p, ("\n",))], n_new)[0] for p in prompts]


def test_scores_on_a_sharded_mesh_equal_the_single_device_ones(reference):
    """Parameters sharded FSDP x tensor-parallel and batches split over data x fsdp: the same log-likelihoods."""
    ref, model, params = reference
    cfg = tiny_config()
    cfg.mesh.update(data=2, fsdp=2, tensor=2)
    mesh = mesh_lib.make_mesh(cfg.mesh, devices=jax.devices()[:8])
    boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros((1, 8), np.int32))["params"])
    sharded = jax.tree.map(jax.device_put, params, mesh_lib.tree_shardings(mesh, boxed))
    assert not sharded["wte"].sharding.is_fully_replicated
    rng = np.random.default_rng(2)
    requests = [(rng.integers(0, VOCAB, n).tolist(), rng.integers(0, VOCAB, 3).tolist()) for n in (2, 9, 5, 12, 7)]
    on_mesh = LM(model, sharded, batch_size=3, mesh=mesh, prefix_ids=[]).loglikelihood_tokens(requests)
    plain = LM(model, params, batch_size=3, prefix_ids=[]).loglikelihood_tokens(requests)
    np.testing.assert_allclose([s.logprob for s in on_mesh], [s.logprob for s in plain], atol=1e-5, rtol=0)
    assert [s.is_greedy for s in on_mesh] == [s.is_greedy for s in plain]


def test_generate_tasks_extract_normalise_and_grade_the_greedy_answer(tok, tiny_lm_parts):
    model, params = tiny_lm_parts
    lm = LM(model, params, tok, batch_size=2)
    task = T.Task(
        "toy_gen", T.GENERATE, "unused", "jsonl", context="{q}:", target="{a}", until=("\n",), max_new_tokens=12,
        extract=r"(\w+)", normalization=T.Normalization(ignore_case=True),
    )  # fmt: skip
    gens = lm.generate_until([("A:", ("\n",)), ("B:", ("\n",)), ("C:", ("\n",))], 12)
    words = [m.group(0) if (m := re.search(r"\w+", g)) else "" for g in gens]
    assert all(words) and "\n" not in "".join(gens)
    # References: the model's own first word in upper case (matches after case folding), then two misses.
    docs = [{"q": "A", "a": words[0].upper()}, {"q": "B", "a": words[1] + "x"}, {"q": "C", "a": "?"}]
    seen = []
    grader = lambda prompt, answer, reference: seen.append((prompt, answer, reference)) or 0.25  # noqa: E731
    data = harness.TaskData(task, list(enumerate(docs)), docs, True, {})
    res = harness.evaluate_task(lm, data, [0], grader=grader, examples=3)[0]
    assert res["exact_match"] == pytest.approx(1 / 3) and res["graded"] == 0.25
    assert seen == [("A:", gens[0], words[0].upper()), ("B:", gens[1], words[1] + "x"), ("C:", gens[2], "?")]
    assert [e["generation"] for e in res["examples"]] == gens and res["max_new_tokens"] == 12


def test_a_rerun_scores_only_requests_the_cache_has_not_seen(tok, tiny_lm_parts, tmp_path):
    from gptx.eval.cache import RequestCache

    model, params = tiny_lm_parts
    first = [(f"{q}:", " " + w) for q in "ABC" for w in ("king", "love")]
    more = first + [("D:", " grace"), ("E:", " crown")]
    fresh = LM(model, params, tok, batch_size=2).loglikelihood(more)  # no cache: the reference

    path = str(tmp_path / "cache.jsonl")
    lm = LM(model, params, tok, batch_size=2, cache=RequestCache(path))
    lm.loglikelihood(first)
    assert lm.forward_passes == 3  # 6 requests, 2 per batch
    rerun = LM(model, params, tok, batch_size=2, cache=RequestCache(path))  # a new run reads the file
    got = rerun.loglikelihood(more)
    assert rerun.forward_passes == 1  # only the two new requests run
    np.testing.assert_allclose([s.logprob for s in got], [s.logprob for s in fresh], atol=1e-5, rtol=0)
    assert [(s.is_greedy, s.n_tokens) for s in got] == [(s.is_greedy, s.n_tokens) for s in fresh]
    again = LM(model, params, tok, batch_size=2, cache=RequestCache(path))
    again.loglikelihood(more)
    assert again.forward_passes == 0
    with open(path, "a") as f:
        f.write('["cut-off line')  # a run killed mid-write: the line is ignored, nothing else lost
    assert len(RequestCache(path).scores) == len(more)


def test_length_buckets_pad_by_at_most_a_quarter_and_compile_four_shapes_per_octave():
    from gptx.eval.requests import MIN_BUCKET, bucket_length

    lengths = range(1, 2049)
    padded = [bucket_length(n, 2048) for n in lengths]
    assert all(b >= n for n, b in zip(lengths, padded, strict=True))
    assert all(b == MIN_BUCKET for n, b in zip(lengths, padded, strict=True) if n <= MIN_BUCKET)
    assert max(b / n for n, b in zip(lengths, padded, strict=True) if n > MIN_BUCKET) <= 1.25
    assert padded == sorted(padded)  # a longer row never pads shorter
    octave = {b for b in padded if 1024 < b <= 2048}
    assert octave == {1280, 1536, 1792, 2048}
    assert bucket_length(3000, 2048) == 2048


def test_continuations_longer_and_shorter_than_the_scored_window_equal_a_full_forward_pass():
    """Scores read from the head's window (a continuation's last tokens) equal log-softmax of the full logits."""
    cfg = tiny_config().model
    model = GPT(GPTConfig.from_config(cfg))
    params = model.init(jax.random.key(0), np.zeros((1, 8), np.int32))["params"]
    rng = np.random.default_rng(0)
    requests = [
        (rng.integers(1, cfg.vocab_size, nc).tolist(), rng.integers(1, cfg.vocab_size, nx).tolist())
        for nc, nx in [(1, 1), (2, 3), (12, 20), (24, 9), (30, 1), (1, 7)]  # rows up to block_size + 1
    ]
    got = LM(model, params, batch_size=4).loglikelihood_tokens(requests)
    for (ctx, cont), score in zip(requests, got, strict=True):
        row = np.asarray([ctx + cont])
        logp = jax.nn.log_softmax(model.apply({"params": params}, row[:, :-1]).astype(np.float32))[0]
        want = sum(float(logp[len(ctx) - 1 + j, t]) for j, t in enumerate(cont))
        greedy = all(int(np.argmax(logp[len(ctx) - 1 + j])) == t for j, t in enumerate(cont))
        np.testing.assert_allclose(score.logprob, want, rtol=1e-5, atol=1e-4)
        assert score.is_greedy == greedy and score.n_tokens == len(cont)
