"""GPT-1 fine-tuning: the paper's input transformations, the extract-token head, the auxiliary LM loss, task
readers, embedding growth for the special tokens, and a tiny end-to-end fine-tune on SST-2."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import SHARED_DATA, tiny_config
from flax import linen as nn

from gptx import mesh as mesh_lib
from gptx.data import finetune_tasks as ft
from gptx.data import sp_tokenizer
from gptx.data import tokenizer as tokenizer_lib
from gptx.models import GPT, heads
from gptx.train import checkpoints, finetune, pretrain
from gptx.train import step as step_lib
from gptx.train.state import TrainState

needs_data = pytest.mark.skipif(not SHARED_DATA.exists(), reason=f"shared data sets not found at {SHARED_DATA}")

S, D, E = 100, 101, 102  # start, delim, extract
SPECIAL = ft.SpecialTokens(S, D, E, (103, 104))


class WordTokenizer:
    """One id per word: 'w7' -> 7. Enough to check layouts by hand."""

    pad_id = sp_tokenizer.PAD_ID

    def encode(self, text):
        return [int(w[1:]) for w in text.split()]


def words(*ids):
    return " ".join(f"w{i}" for i in ids)


def test_input_transformations_produce_the_papers_layouts():
    tok = WordTokenizer()
    ex = ft.Example(words(10, 11), words(20, 21, 22), choices=(words(30), words(40, 41)))
    assert ft.transform(ex, ft.CLASSIFICATION, tok, SPECIAL, 16) == [[S, 10, 11, E]]
    assert ft.transform(ex, ft.ENTAILMENT, tok, SPECIAL, 16) == [[S, 10, 11, D, 20, 21, 22, E]]
    assert ft.transform(ex, ft.SIMILARITY, tok, SPECIAL, 16) == [
        [S, 10, 11, D, 20, 21, 22, E],
        [S, 20, 21, 22, D, 10, 11, E],
    ]
    assert ft.transform(ex, ft.MULTIPLE_CHOICE, tok, SPECIAL, 16) == [[S, 10, 11, D, 30, E], [S, 10, 11, D, 40, 41, E]]
    # Multi-task: the task token right after start.
    assert ft.transform(ex, ft.ENTAILMENT, tok, SPECIAL, 16, task_token=104) == [[S, 104, 10, 11, D, 20, 21, 22, E]]


def test_truncation_keeps_the_layout_and_cuts_where_documented():
    tok = WordTokenizer()
    lone = ft.Example(words(*range(1, 11)))
    assert ft.transform(lone, ft.CLASSIFICATION, tok, SPECIAL, 8) == [[S, 1, 2, 3, 8, 9, 10, E]]  # middle cut
    pair = ft.Example(words(*range(1, 9)), words(*range(20, 26)))
    (seq,) = ft.transform(pair, ft.ENTAILMENT, tok, SPECIAL, 9)
    # premise loses its start, hypothesis its end, the longer one first
    assert seq == [S, 6, 7, 8, D, 20, 21, 22, E]
    arrays = ft.pad_example([seq, [S, 1, E]], 1, 0, 3, 12, tok.pad_id, [S, E])
    np.testing.assert_array_equal(arrays["tokens"][0], seq + [tok.pad_id] * 3)  # right-padded
    np.testing.assert_array_equal(arrays["segment_ids"][0], [1] * 9 + [0] * 3)
    np.testing.assert_array_equal(arrays["extract_pos"], [8, 2, 1])
    np.testing.assert_array_equal(arrays["seq_mask"], [1, 1, 0])  # third slot: masked filler
    assert arrays["label"].shape == arrays["task"].shape == arrays["weight"].shape == (1,)


def small_model(kinds, vocab=128, dropout=0.0):
    cfg = tiny_config(vocab_size=vocab)
    cfg.finetune.clf_dropout = dropout
    task_heads = tuple(heads.TaskHead(f"t{i}", finetune.POOLING[kind], n) for i, (kind, n) in enumerate(kinds))
    return cfg, finetune.make_model(cfg, task_heads)


def losses(params, batch, model, aux_lm_coef):
    """(loss, metrics) of the fine-tuning objective on one whole batch, dropout off."""
    objective = finetune.loss(model, aux_lm_coef)
    return objective.fn(params, batch, None, objective.norms(batch))


def model_batch(seqs_per_example, tasks, n_seqs, seq_len=16):
    rows = [
        ft.pad_example(seqs, 0, task, n_seqs, seq_len, sp_tokenizer.PAD_ID, [S, E])
        for seqs, task in zip(seqs_per_example, tasks, strict=True)
    ]
    return {k: jnp.asarray(np.stack([r[k] for r in rows])) for k in rows[0]}


def init(model, n_seqs, seq_len=16, seed=0):
    tx = optax.sgd(0.1)
    return nn.meta.unbox(finetune.make_init_fn(model, tx, n_seqs, seq_len, None)(jax.random.key(seed))).params


def test_the_head_reads_the_extract_tokens_hidden_state():
    _, model = small_model([(ft.CLASSIFICATION, 2)])
    params = init(model, 1)
    seq = [S, 5, 6, 7, E]
    base = model_batch([[seq]], [0], 1)
    logits, _ = finetune.apply(model, params, base)
    # Tokens after the extract token (padding, or junk in its place) cannot change the prediction...
    junk = base["tokens"].at[0, 0, len(seq) :].set(77)
    np.testing.assert_array_equal(finetune.apply(model, params, {**base, "tokens": junk})[0], logits)
    # ...while the tokens it reads do, and so would reading another position.
    other = model_batch([[[S, 5, 9, 7, E]]], [0], 1)
    assert not np.allclose(finetune.apply(model, params, other)[0], logits)
    moved = {**base, "extract_pos": base["extract_pos"] - 1}
    assert not np.allclose(finetune.apply(model, params, moved)[0], logits)


def test_similarity_is_symmetric_in_its_two_inputs():
    _, model = small_model([(ft.SIMILARITY, 3)])
    params = init(model, 2)
    tok = WordTokenizer()
    ab = ft.transform(ft.Example(words(5, 6, 7), words(8, 9)), ft.SIMILARITY, tok, SPECIAL, 16)
    ba = ft.transform(ft.Example(words(8, 9), words(5, 6, 7)), ft.SIMILARITY, tok, SPECIAL, 16)
    assert ab == ba[::-1]
    logits, _ = finetune.apply(model, params, model_batch([ab, ba], [0, 0], 2))
    np.testing.assert_allclose(logits[0], logits[1], rtol=1e-6, atol=1e-6)
    # Not trivially so: one ordering alone gives different logits than the other.
    one = model_batch([[ab[0]], [ab[1]]], [0, 0], 2)
    one = {**one, "seq_mask": jnp.ones_like(one["seq_mask"])}  # filler in slot 1 of both rows
    single, _ = finetune.apply(model, params, one)
    assert not np.allclose(single[0], single[1])


def test_multiple_choice_is_a_softmax_over_per_choice_scores():
    _, model = small_model([(ft.MULTIPLE_CHOICE, 4), (ft.CLASSIFICATION, 2)])
    params = init(model, 4)
    choices = [[S, 5, D, 10 + k, E] for k in range(4)]
    perm = [2, 0, 3, 1]
    batch = model_batch([choices, [choices[i] for i in perm], choices[:1]], [0, 0, 1], 4)
    logits, _ = finetune.apply(model, params, batch)
    # One scalar per choice, independent of the other choices: permuting choices permutes the logits.
    np.testing.assert_allclose(logits[1], logits[0][np.array(perm)], rtol=1e-5, atol=1e-6)
    assert len(set(np.round(np.asarray(logits[0]), 6))) == 4
    # The classification row in the same batch has 2 real logits, its other slots are masked.
    assert (logits[2, 2:] == heads.NEG).all()
    batch = {**batch, "label": jnp.asarray([[3], [2], [1]])}
    value, _ = losses(params, batch, model, 0.0)
    p = jax.nn.softmax(logits, axis=-1)
    assert float(jnp.sum(p[0])) == pytest.approx(1.0)
    want = -np.mean([math.log(p[0, 3]), math.log(p[1, 2]), math.log(p[2, 1])])
    assert float(value) == pytest.approx(want, rel=1e-5)


def test_auxiliary_lm_loss_enters_with_weight_lambda():
    cfg, model = small_model([(ft.ENTAILMENT, 3)])
    params = init(model, 1)
    seqs = [[[S, 5, 6, D, 7, E]], [[S, 8, D, 9, 10, 11, E]]]
    batch = {**model_batch(seqs, [0, 0], 1), "label": jnp.asarray([[2], [0]])}
    l0, m0 = losses(params, batch, model, 0.0)
    l5, m5 = losses(params, batch, model, 0.5)
    # By hand: the plain GPT's next-token cross-entropy over the real tokens of both sequences.
    lm_logits = GPT(model.cfg).apply({"params": params["gpt"]}, batch["tokens"][:, 0])
    logp = jax.nn.log_softmax(lm_logits, -1)
    ces = [-float(logp[b, t, s[t + 1]]) for b, (s,) in enumerate(seqs) for t in range(len(s) - 1)]
    lm_hand = float(np.mean(ces))
    assert float(l0) == pytest.approx(float(m0["clf_loss"]))
    assert float(m5["lm_loss"]) == pytest.approx(lm_hand, rel=1e-5)
    assert float(l5) == pytest.approx(float(m0["clf_loss"]) + 0.5 * lm_hand, rel=1e-5)


def test_gradient_accumulation_equals_one_double_batch():
    """Two micro-batches of uneven weight (a padding example, sequences of different lengths, so the auxiliary LM
    loss has a different token count in each half) give the step of the whole batch."""
    _, model = small_model([(ft.ENTAILMENT, 3)])
    params = init(model, 1)
    seqs = [[[S, 5, 6, D, 7, E]], [[S, 8, D, 9, 10, 11, 12, 13, E]], [[S, 4, D, 3, E]], [[S, 9, 9, 9, D, 2, E]]]
    batch = {**model_batch(seqs, [0] * 4, 1), "label": jnp.asarray([[2], [0], [1], [1]])}
    batch["weight"] = jnp.asarray([[1.0], [1.0], [1.0], [0.0]])  # the last example is padding
    state = TrainState.create(apply_fn=model.apply, params=params, tx=optax.sgd(0.1))
    objective = finetune.loss(model, 0.5)
    one = jax.jit(step_lib.make_train_step(objective))(state, batch, jax.random.key(0))
    two = jax.jit(step_lib.make_train_step(objective, grad_accum=2))(state, batch, jax.random.key(0))
    for key in ("loss", "clf_loss", "lm_loss", "accuracy", "grad_norm"):
        np.testing.assert_allclose(two[1][key], one[1][key], rtol=1e-5, err_msg=key)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), two[0].params, one[0].params)
    # Not trivially equal: the mean of the two micro-batches' own means is a different number.
    halves = [jax.tree.map(lambda x, i=i: x[i::2], batch) for i in range(2)]
    mean_of_means = np.mean([float(losses(params, h, model, 0.5)[0]) for h in halves])
    assert abs(mean_of_means - float(one[1]["loss"])) > 1e-3


def test_growing_the_embedding_keeps_old_rows_and_loads_a_checkpoint(tmp_path, one_device_mesh):
    pre_cfg = tiny_config(vocab_size=64)
    _, pre_init = pretrain.make_model(pre_cfg)
    state = nn.meta.unbox(pre_init(jax.random.key(1)))
    with checkpoints.manager(str(tmp_path)) as mngr:
        checkpoints.save(mngr, 0, state)
    _, model = small_model([(ft.CLASSIFICATION, 2)], vocab=64 + 3 + 50)
    with mesh_lib.activation_rules(one_device_mesh):
        pretrained = finetune.load_pretrained_params(str(tmp_path), model, one_device_mesh)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(pretrained), jax.device_get(state.params))

    tx = optax.sgd(0.1)
    params = nn.meta.unbox(finetune.make_init_fn(model, tx, 1, 16, pretrained)(jax.random.key(0))).params
    wte, old = np.asarray(params["gpt"]["wte"]), np.asarray(state.params["wte"])
    assert wte.shape == (117, 32)
    np.testing.assert_array_equal(wte[:64], old)
    assert 0.015 < wte[64:].std() < 0.025 and abs(wte[64:].mean()) < 0.01  # N(0, 0.02) rows
    np.testing.assert_array_equal(params["gpt"]["h_1"]["mlp"]["fc_kernel"], state.params["h_1"]["mlp"]["fc_kernel"])
    _, wrong = small_model([(ft.CLASSIFICATION, 2)], vocab=32)
    with pytest.raises(ValueError, match="more than config.model.vocab_size"):
        finetune.make_init_fn(wrong, tx, 1, 16, pretrained)(jax.random.key(0))


@needs_data
def test_readers_parse_the_real_files():
    d = SHARED_DATA
    counts = {
        "sst2/train.tsv": (ft.read_sst2, 1000),
        "sst2/dev.tsv": (ft.read_sst2, 872),
        "rte/train.tsv": (ft.read_rte, 2490),
        "rte/dev.tsv": (ft.read_rte, 277),
        "nli/snli_dev.jsonl": (ft.read_snli, 9842),
        "hellaswag/hellaswag_val_full.txt.bz2": (ft.read_hellaswag, 10042),
    }
    for rel, (reader, n) in counts.items():
        r = reader(str(d / rel))
        assert (len(r.examples), r.malformed) == (n, 0), r.summary()
    hs = ft.read_hellaswag(str(d / "hellaswag/hellaswag_val_full.txt.bz2")).examples[0]
    assert hs.text_a.startswith("Roof shingle removal") and len(hs.choices) == 4 and hs.label == 3
    assert ft.read_rte(str(d / "rte/dev.tsv")).examples[0].label == ft.RTE_LABELS.index("not_entailment")


@needs_data
def test_readers_count_malformed_records_and_keep_the_rest(tmp_path):
    d = SHARED_DATA
    sst = (d / "sst2/dev.tsv").read_text().splitlines()
    (tmp_path / "sst.tsv").write_text("\n".join([*sst[:4], "no label column", "text\t7", *sst[4:6]]) + "\n")
    r = ft.read_sst2(str(tmp_path / "sst.tsv"))
    assert (len(r.examples), r.malformed, r.malformed_lines) == (5, 2, [5, 6])
    rte = (d / "rte/dev.tsv").read_text().splitlines()
    (tmp_path / "rte.tsv").write_text("\n".join([*rte[:3], "9\tonly a premise", "10\ta\tb\tmaybe", rte[3]]) + "\n")
    r = ft.read_rte(str(tmp_path / "rte.tsv"))
    assert (len(r.examples), r.malformed) == (3, 2)
    snli = (d / "nli/snli_dev.jsonl").read_text().splitlines()
    (tmp_path / "snli.jsonl").write_text("\n".join([snli[0], "{not json", '{"premise": "a"}', snli[1]]) + "\n")
    r = ft.read_snli(str(tmp_path / "snli.jsonl"))
    assert (len(r.examples), r.malformed, r.malformed_lines) == (2, 2, [2, 3])
    import bz2

    hs = bz2.decompress((d / "hellaswag/hellaswag_val_full.txt.bz2").read_bytes()).decode().split("\n")
    broken = hs[:6] + [hs[6], "not a label", *hs[8:12]] + hs[12:18]  # the second record's label is bad
    (tmp_path / "hs.txt").write_text("\n".join(broken) + "\n")
    r = ft.read_hellaswag(str(tmp_path / "hs.txt"))
    assert (len(r.examples), r.malformed) == (2, 1)
    assert r.examples[1].text_a == hs[12]


def tiny_finetune_config(tmp_path, tok_path):
    cfg = tiny_config(vocab_size=512 + 3)
    cfg.data.tokenizer = str(tok_path)
    cfg.finetune.update(
        tasks="sst2", data_dir=str(SHARED_DATA), train_limit=64, eval_limit=64, epochs=12.0, warmup_fraction=0.05
    )
    cfg.train.update(batch_size=16, lr=3e-3, weight_decay=0.0, eval_every=1000, ckpt_every=1000, log_every=4)
    return cfg


@needs_data
def test_tiny_sst2_finetune_fits_its_training_examples(tmp_path, one_device_mesh):
    """48 steps on 64 SST-2 sentences from random init: the task loss must fall far below chance (ln 2) and the
    training examples be classified well above chance; the results file holds dev accuracy."""
    train = ft.read_sst2(str(SHARED_DATA / "sst2/train.tsv")).examples
    tok = tokenizer_lib.train([ex.text_a for ex in train], 512)
    tok.save(str(tmp_path / "tok.model"))
    cfg = tiny_finetune_config(tmp_path, tmp_path / "tok.model")
    finetune.validate_finetune(cfg)
    out = finetune.run(cfg, str(tmp_path / "run"), one_device_mesh)
    assert out["steps"] == 48
    r = out["tasks"]["sst2"]
    assert r["train_examples"] == 64 and r["examples"] == 64
    assert r["train_accuracy"] >= 0.85, r
    losses = [row["clf_loss"] for row in loop_history(tmp_path / "run")]
    assert losses[-1] < 0.5 * math.log(2) < losses[0] * 1.5, losses
    saved = json.loads((tmp_path / "run" / finetune.RESULTS).read_text())
    assert saved["tasks"]["sst2"]["accuracy"] == r["accuracy"]


def loop_history(workdir):
    from gptx.train import logs

    return [row for row in logs.read_metrics(str(workdir)) if "clf_loss" in row]


def test_config_section_is_validated():
    cfg = tiny_config()
    finetune.validate_finetune(cfg)
    cfg.finetune.tasks = "sst2,nope"
    with pytest.raises(Exception, match="config.finetune.tasks"):
        finetune.validate_finetune(cfg)
    cfg.finetune.tasks = "sst2"
    tok = type("T", (), {"vocab_size": cfg.model.vocab_size})()
    with pytest.raises(Exception, match="config.model.vocab_size"):
        finetune.special_tokens(cfg, tok)
