"""InstructGPT data, SFT and reward model: readers count bad records, splits keep prompts apart, the SFT loss
ignores the prompt, the K-choose-2 loss is the paper's and reads the score at the last real token."""

import gzip
import itertools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import SHARED_DATA

from gptx.data import sp_tokenizer
from gptx.models import GPT, GPTConfig
from gptx.rlhf import common, data, labeler, reward
from gptx.train import lm

needs_data = pytest.mark.skipif(not SHARED_DATA.exists(), reason=f"shared data sets not found at {SHARED_DATA}")
CFG = GPTConfig(vocab_size=64, block_size=32, n_layer=1, n_head=2, d_model=32, dropout=0.0, attn_dropout=0.0)


class WordTokenizer:
    """'w7 w9' -> [7, 9]; enough to check layouts by hand."""

    bos_id, eos_id, pad_id = sp_tokenizer.BOS_ID, sp_tokenizer.EOS_ID, sp_tokenizer.PAD_ID

    def encode(self, text):
        return [int(w[1:]) for w in text.split()]


def test_hh_rlhf_records_become_a_shared_prompt_and_two_ranked_replies(tmp_path):
    good = {"chosen": "\n\nHuman: hi\n\nAssistant: hello there", "rejected": "\n\nHuman: hi\n\nAssistant: go away"}
    later = {  # the texts part in an earlier turn: the prompt ends at the last shared Assistant turn
        "chosen": "\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant: d",
        "rejected": "\n\nHuman: a\n\nAssistant: x",
    }
    lines = [
        json.dumps(good),
        "{not json",
        json.dumps({"chosen": "only one"}),
        json.dumps({"chosen": good["chosen"], "rejected": good["chosen"]}),  # identical
        json.dumps({"chosen": "\n\nHuman: hi\n\nAssistant: ", "rejected": "\n\nHuman: hi\n\nAssistant: no"}),  # empty
        json.dumps(later),
    ]
    path = tmp_path / "hh.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write("\n".join(lines) + "\n")
    result = data.read_hh_rlhf(str(path))
    assert result.malformed == 4 and result.malformed_lines == [2, 3, 4, 5]
    first, second = result.examples
    assert first.prompt == "\n\nHuman: hi\n\nAssistant:" and first.responses == (" hello there", " go away")
    assert first.pairs == ((0, 1),)
    assert second.prompt == "\n\nHuman: a\n\nAssistant:"
    assert second.responses == (" b\n\nHuman: c\n\nAssistant: d", " x")


@needs_data
def test_shared_preference_and_demonstration_files_read_with_their_bad_records_counted():
    hh = data.read_hh_rlhf(str(SHARED_DATA / data.HH_RLHF))
    assert len(hh.examples) + hh.malformed == 2312 and hh.malformed == 4  # 4 records have an empty reply
    assert all(c.prompt.endswith(data.ASSISTANT) and len(c.responses) == 2 for c in hh.examples)
    demos = data.read_self_instruct(str(SHARED_DATA / data.SELF_INSTRUCT))
    assert demos.malformed == 0 and len(demos.examples) >= 175
    assert all(d.prompt.startswith(data.HUMAN) and d.response.strip() for d in demos.examples)


def test_self_instruct_reader_counts_bad_lines(tmp_path):
    ok = {"instruction": "Add.", "instances": [{"input": "1 2", "output": "3"}]}
    path = tmp_path / "seed.jsonl"
    path.write_text("\n".join([json.dumps(ok), "[", json.dumps({"instruction": "x", "instances": []})]) + "\n")
    result = data.read_self_instruct(str(path))
    assert result.malformed == 2 and result.malformed_lines == [2, 3]
    assert result.examples == [data.Demonstration("\n\nHuman: Add.\n1 2\n\nAssistant:", " 3")]


def test_split_by_prompt_is_seeded_and_never_shares_a_prompt():
    items = [data.Demonstration(f"p{i % 30}", f"r{i}") for i in range(90)]
    train, test = data.split_by_prompt(items, 0.2, seed=3)
    assert len(train) + len(test) == 90 and {d.prompt for d in train}.isdisjoint({d.prompt for d in test})
    assert len({d.prompt for d in test}) == 6
    assert data.split_by_prompt(items, 0.2, seed=3) == (train, test)
    assert data.split_by_prompt(items, 0.2, seed=4)[1] != test


def test_sft_loss_is_the_response_tokens_negative_log_likelihood_only():
    tok = WordTokenizer()
    demo = data.Demonstration("w10 w11 w12 w13", "w20 w21 w22")
    ex = data.sft_example(tok, demo, seq_len=12, max_prompt=8, max_response=8)
    # [BOS 10 11 12 13] [20 21 22 EOS]: targets 20, 21, 22, EOS count, the prompt's do not.
    np.testing.assert_array_equal(ex["targets"][:8], [10, 11, 12, 13, 20, 21, 22, 2])
    np.testing.assert_array_equal(ex["weights"], [0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0])
    batch = {k: jnp.asarray(v)[None] for k, v in ex.items()}
    model = GPT(CFG)
    params = common.random_params(model, batch["inputs"])
    loss = jax.jit(lambda p, b: (lambda total, w: total / w)(*lm.lm_loss_sum(p, b, None, model)))

    # Brute force: -mean log p(y_t | prompt, y_<t) over the response tokens of the unpadded sequence.
    seq = [1, 10, 11, 12, 13, 20, 21, 22, 2]
    logp = jax.nn.log_softmax(jax.jit(model.apply)({"params": params}, jnp.asarray([seq]))[0])
    nll = [-float(logp[t - 1, seq[t]]) for t in range(5, len(seq))]
    value = loss(params, batch)
    np.testing.assert_allclose(value, np.mean(nll), rtol=1e-5)

    def with_target(t: int) -> dict:  # the batch with another token as target t
        return {**batch, "targets": batch["targets"].at[0, t].set((int(batch["targets"][0, t]) + 7) % CFG.vocab_size)}

    for t in [*range(4), *range(8, 12)]:  # targets of prompt tokens and padding do not enter the loss
        assert float(loss(params, with_target(t))) == float(value), t
    for t in range(4, 8):  # every response target does
        assert abs(float(loss(params, with_target(t))) - float(value)) > 1e-6, t


def _rm_batch(comps, tok, k, seq_len=12):
    rows = [data.rm_example(tok, c, seq_len, k, 6, 6) for c in comps]
    return {key: jnp.asarray(np.stack([r[key] for r in rows])) for key in rows[0]}


def test_rm_batch_element_holds_all_k_choose_2_pairs_and_loss_matches_brute_force():
    tok = WordTokenizer()
    rng = np.random.default_rng(0)
    comps = [
        data.Comparison.from_scores("w5 w6", [f"w{10 + i}" for i in range(4)], [0.3, -1.0, 0.9, 0.1]),
        data.Comparison.from_scores("w7", ["w30", "w31", "w32"], [1.0, 1.0, -2.0]),  # a tie: 2 pairs, not 3
    ]
    batch = _rm_batch(comps, tok, k=4)
    assert batch["tokens"].shape == (2, 4, 12) and batch["pair_w"].shape == (2, 6)  # C(4, 2) = 6 slots
    np.testing.assert_array_equal(batch["pair_mask"].sum(1), [6, 2])
    scores = jnp.asarray(rng.normal(size=(2, 4)), jnp.float32)
    total, n, metrics = reward.pairwise_loss(scores, batch)
    expect, right, pairs = [], 0, 0
    for b, c in enumerate(comps):  # the paper's formula, one pair at a time
        terms = [np.log(1 / (1 + np.exp(-(scores[b, w] - scores[b, lo])))) for w, lo in c.pairs]
        expect.append(-np.sum(terms) / len(c.pairs))
        right += sum(float(scores[b, w] > scores[b, lo]) for w, lo in c.pairs)
        pairs += len(c.pairs)
    np.testing.assert_allclose(total / n, np.mean(expect), rtol=1e-6)
    np.testing.assert_allclose(metrics["accuracy"], right / pairs, rtol=1e-6)


def test_rm_loss_does_not_change_when_the_k_responses_are_permuted():
    tok = WordTokenizer()
    texts, scores = ["w10", "w11 w12", "w13", "w14 w15 w16"], [0.5, 2.0, -1.0, 0.0]
    model = reward.RewardModel(CFG)
    comp = data.Comparison.from_scores("w3 w4", texts, scores)
    batch = _rm_batch([comp], tok, k=4)
    params = common.random_params(model, batch["tokens"][0], seed=1)
    score_fn = jax.jit(lambda p, b: reward.comparison_scores(model, p, b))
    base = reward.pairwise_loss(score_fn(params, batch), batch)[0]
    for perm in itertools.islice(itertools.permutations(range(4)), 1, 24, 7):
        permuted = data.Comparison.from_scores("w3 w4", [texts[i] for i in perm], [scores[i] for i in perm])
        b = _rm_batch([permuted], tok, k=4)
        np.testing.assert_allclose(reward.pairwise_loss(score_fn(params, b), b)[0], base, 1e-5)


def test_reward_is_read_at_the_last_real_token_whatever_the_padding():
    model = reward.RewardModel(CFG)
    seq = jnp.asarray([1, 9, 8, 7, 2])
    right = jnp.full((1, 9), 3).at[0, :5].set(seq)
    left = jnp.full((1, 9), 3).at[0, 4:].set(seq)
    mask_r, mask_l = right != 3, left != 3
    params = common.random_params(model, right, seed=2)
    score = jax.jit(lambda t, m: reward.sequence_scores(model, params, t, m))
    r_right, r_left = score(right, mask_r), score(left, mask_l)
    direct = jax.jit(model.apply)({"params": params}, seq[None])[0, -1]  # unpadded, its own last token
    np.testing.assert_allclose(r_right, direct, rtol=1e-5)
    np.testing.assert_allclose(r_left, direct, rtol=1e-5)
    other_pad = jnp.where(mask_r, right, 17)  # what padding holds does not matter
    np.testing.assert_allclose(score(other_pad, mask_r), direct, rtol=1e-5)
    assert abs(float(score(right.at[0, 4].set(5), mask_r)[0] - direct)) > 1e-6  # the last real token counts
    np.testing.assert_array_equal(common.last_index(jnp.asarray([[0, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]])), [2, 0, 0])


def test_normalisation_gives_reference_samples_mean_0_and_std_1():
    raw = np.random.default_rng(0).normal(3.0, 7.0, size=500)
    norm = reward.normalisation(raw)
    z = norm["gain"] * raw + norm["bias"]
    np.testing.assert_allclose([z.mean(), z.std()], [0.0, 1.0], atol=1e-9)
    assert norm["gain"] > 0  # the order of responses is kept


def test_labeler_ranks_positive_text_first_and_win_rate_counts_ties_half():
    pytest.importorskip("vaderSentiment")
    judge = labeler.get("vader")
    good, bad = judge(["what a lovely, happy day", "a terrible, hateful day"])
    assert good > 0 > bad
    comp = data.Comparison.from_scores("p", ["bad", "good"], [bad, good])
    assert comp.pairs == ((1, 0),)
    assert labeler.win_rate([1, 0, 2], [0, 0, 3]) == pytest.approx(0.5)


def test_rm_gradient_accumulation_equals_one_double_batch():
    """Micro-batches with different numbers of pairs (K = 4 with ties, K = 3, a padding element) accumulate to
    the step of the whole batch: the loss averages over elements, the accuracy over pairs, of the whole batch."""
    import optax

    from gptx.train import step as step_lib
    from gptx.train.state import TrainState

    tok = WordTokenizer()
    comps = [
        data.Comparison.from_scores("w5 w6", ["w10", "w11", "w12", "w13"], [0.3, -1.0, 0.9, 0.1]),
        data.Comparison.from_scores("w7", ["w30", "w31", "w32"], [1.0, 1.0, -2.0]),
        data.Comparison.from_scores("w8 w9", ["w40 w41", "w42"], [0.0, 1.0]),
        data.Comparison.from_scores("w2", ["w20", "w21", "w22", "w23"], [4.0, 3.0, 2.0, 1.0]),
    ]
    batch = _rm_batch(comps, tok, k=4)
    batch["weight"] = batch["weight"].at[2].set(0.0)  # a padding element counts for nothing
    model = reward.RewardModel(CFG)
    params = common.random_params(model, batch["tokens"][0], seed=3)
    state = TrainState.create(apply_fn=model.apply, params=params, tx=optax.sgd(0.1))
    objective = reward.loss(model)
    one = jax.jit(step_lib.make_train_step(objective))(state, batch, jax.random.key(0))
    two = jax.jit(step_lib.make_train_step(objective, grad_accum=2))(state, batch, jax.random.key(0))
    for key in ("loss", "accuracy", "reward_gap", "grad_norm"):
        np.testing.assert_allclose(two[1][key], one[1][key], rtol=1e-5, err_msg=key)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), two[0].params, one[0].params)
    # The whole batch's loss is the paper's: the mean over real elements of each element's mean over its pairs.
    total, n, _ = reward.pairwise_loss(reward.comparison_scores(model, params, batch), batch)
    np.testing.assert_allclose(one[1]["loss"], total / n, rtol=1e-6)
    assert float(n) == 3.0


def test_rm_refuses_random_init_unless_asked_and_ppo_checks_stay_with_ppo(tmp_path):
    from conftest import tiny_config

    from gptx.config import ConfigError

    c = tiny_config()
    c.rlhf.update(rollout_batch=8, minibatch=16, max_prompt_len=16, max_response_len=16)  # minibatch: PPO only
    with pytest.raises(ConfigError, match="allow_random_init=True"):
        reward.run(c, str(tmp_path / "rm"))
    data.validate(c, "rm")
    data.validate(c, "sft")
    with pytest.raises(ConfigError, match="rollout_batch=8 is not divisible"):
        data.validate(c, "ppo")
    c.rlhf.allow_random_init = True
    reward.require_init(c)  # asked for: no error


def test_wilson_interval_matches_its_closed_form_and_covers_chance_when_it_should():
    low, high = reward.wilson_interval(60, 100)
    z = 1.959964  # Wilson (1927): (p + z²/2n ± z sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n)
    p, n = 0.6, 100
    centre, half = (p + z * z / (2 * n)) / (1 + z * z / n), z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    np.testing.assert_allclose([low, high], [centre - half / (1 + z * z / n), centre + half / (1 + z * z / n)])
    np.testing.assert_allclose([low, high], [0.502, 0.691], atol=1e-3)  # tabulated for 60/100
    assert reward.wilson_interval(0, 10)[0] == 0.0 and reward.wilson_interval(10, 10)[1] == pytest.approx(1.0)


def test_instructgpt_normalisation_moves_only_the_bias():
    raw = np.random.default_rng(1).normal(-2.0, 5.0, size=300)
    norm = reward.normalisation(raw, scale=False)
    z = norm["gain"] * raw + norm["bias"]
    assert norm["gain"] == 1.0 and abs(z.mean()) < 1e-9
    np.testing.assert_allclose(z.std(), raw.std())  # the RM's own scale is kept
