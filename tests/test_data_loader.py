"""The grain loader over prepared ArrayRecord shards: determinism, exact resume, per-process sharding, packing
that never lets a token attend across documents, and `train`/`tokenizer` reading a prepared directory."""

import collections
import json

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config

from gptx.data import finetune_tasks, loader, records, sources
from gptx.data import tokenizer as tokenizer_lib
from gptx.models import GPT, GPTConfig


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A prepared directory (3 train shards, 1 val shard) of Shakespeare paragraphs, and a tokenizer."""
    out = tmp_path_factory.mktemp("prepared")
    docs = list(sources.read_documents("bundled:tinyshakespeare")[:260])
    train, val = docs[:240], docs[240:]
    for i in range(3):
        records.write_shard(str(out / records.shard_name("train", i, 3)), [{"text": t} for t in train[i::3]])
    records.write_shard(str(out / records.shard_name("val", 0, 1)), [{"text": t} for t in val])
    tok = tokenizer_lib.train(docs, vocab_size=400)
    return out, [t for i in range(3) for t in train[i::3]], val, tok


def _docs_of(batches, bos):
    """Token lists of the documents in a stream of packed batches: concatenate the real inputs, cut at BOS."""
    stream = np.concatenate([b["inputs"][b["segment_ids"] > 0] for b in batches])
    cuts = np.flatnonzero(stream == bos)
    return [tuple(x[1:].tolist()) for x in np.split(stream, cuts)[1:]]


def test_prepared_directory_is_a_lazy_corpus_with_its_own_splits(prepared):
    out, train, val, _ = prepared
    corpus = sources.read_documents(str(out))
    assert isinstance(corpus, records.PreparedCorpus) and len(corpus) == len(train) + len(val)
    tr, va = loader.split_train_val(corpus, 0.5)
    assert list(tr) == train and list(va) == val and corpus[-1] == val[-1]


def test_loader_is_deterministic_for_a_seed(prepared):
    out, _, _, tok = prepared
    corpus = records.PreparedCorpus(str(out))

    def first(seed, n=6):
        it = iter(loader.lm_dataset(corpus.train, tok, seq_len=64, batch_size=4, seed=seed))
        return np.stack([next(it)["inputs"] for _ in range(n)])

    np.testing.assert_array_equal(first(0), first(0))
    assert not np.array_equal(first(0), first(1))


def test_resume_mid_epoch_reproduces_the_uninterrupted_batches(prepared):
    out, train, _, tok = prepared
    corpus = records.PreparedCorpus(str(out))

    def dataset():
        return loader.lm_dataset(corpus.train, tok, seq_len=64, batch_size=8, seed=5)

    uninterrupted = iter(dataset())
    expected = [next(uninterrupted)["inputs"] for _ in range(60)]  # past the end of the first epoch
    it = iter(dataset())
    for _ in range(20):
        next(it)
    state = json.loads(json.dumps(it.get_state()))  # what the checkpoint stores
    resumed = iter(dataset())
    resumed.set_state(state)
    for want in expected[20:]:
        np.testing.assert_array_equal(next(resumed)["inputs"], want)
    epoch_tokens = sum(len(tok.encode(t)) + 1 for t in train)
    assert 20 * 8 * 64 < epoch_tokens < 60 * 8 * 64  # resumed mid-epoch, compared across the epoch boundary


def test_two_processes_read_disjoint_documents_that_cover_the_split(prepared):
    out, train, _, tok = prepared
    corpus = records.PreparedCorpus(str(out))
    seen = []
    for index in (0, 1):
        shard = grain.sharding.ShardOptions(shard_index=index, shard_count=2)
        ds = loader.lm_dataset(corpus.train, tok, seq_len=64, batch_size=2, train=False, shard=shard)
        seen.append(collections.Counter(_docs_of(list(ds), tok.bos_id)))
    everything = collections.Counter(tuple(tok.encode(t)) for t in train)
    assert not (set(seen[0]) & set(seen[1]) - {()})  # no document in both (identical texts aside)
    assert seen[0] + seen[1] == everything


def test_no_packed_row_attends_across_documents(prepared):
    # Each document's logits in a packed row equal its logits when run alone: nothing leaks between segments.
    out, _, _, tok = prepared
    batch = next(iter(loader.lm_dataset(records.PreparedCorpus(str(out)).train, tok, seq_len=64, batch_size=2)))
    cfg = tiny_config(vocab_size=tok.vocab_size, block_size=64)
    model = GPT(GPTConfig.from_config(cfg.model))
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 64), jnp.int32))["params"]
    apply = jax.jit(lambda *a: model.apply({"params": params}, *a))
    packed = apply(batch["inputs"], batch["positions"], batch["segment_ids"])
    segments = [
        (row, np.flatnonzero(batch["segment_ids"][row] == s))
        for row in range(2)
        for s in np.unique(batch["segment_ids"][row][batch["segment_ids"][row] > 0])
    ]
    # Alone: each document at the start of its own row; causal attention keeps the padding after it unseen.
    alone = np.zeros((len(segments), 64), np.int32)
    for k, (row, idx) in enumerate(segments):
        alone[k, : len(idx)] = batch["inputs"][row, idx]
    single = apply(alone, jnp.broadcast_to(jnp.arange(64), alone.shape), None)
    for k, (row, idx) in enumerate(segments):
        np.testing.assert_allclose(packed[row, idx], single[k, : len(idx)], atol=2e-5, rtol=1e-4)
    assert len(segments) >= 4


def test_tokenizer_trains_from_prepared_data_with_reserved_ids(prepared, tmp_path):
    from gptx.train import pretrain

    out, _, _, _ = prepared
    cfg = tiny_config()
    cfg.data.corpus = str(out)
    cfg.tokenizer.vocab_size = 420
    tok = pretrain.train_tokenizer(cfg, str(tmp_path))
    assert (tmp_path / "tokenizer.model").exists()  # beside the run's checkpoints
    pieces = [tok.sp.id_to_piece(i) for i in range(4)]
    assert pieces == ["<unk>", "<s>", "</s>", "<pad>"] and (tok.bos_id, tok.eos_id, tok.pad_id) == (1, 2, 3)
    assert tok.decode(tok.encode("naïve ☃")) == "naïve ☃"  # byte fallback covers unseen characters
    # GPT-1's start/delimiter/extract tokens take the ids right after the tokenizer's, never one of its pieces.
    special = finetune_tasks.SpecialTokens.for_tokenizer(tok.vocab_size)
    assert min(special.start, special.delim, special.extract) == tok.vocab_size


def test_the_trainer_reads_a_prepared_directory(prepared):
    from gptx.train import pretrain

    out, train, val, tok = prepared
    cfg = tiny_config()
    train_docs, val_docs = loader.split_train_val(sources.read_documents(str(out)), cfg.data.val_fraction)
    trainer = pretrain.make_trainer(cfg, tok, train_docs, val_docs)
    assert next(iter(trainer.train_data))["inputs"].shape == (cfg.train.batch_size // jax.process_count(), 32)
    eval_docs = _docs_of(list(trainer.eval_data()), tok.bos_id)
    assert eval_docs[0] == tuple(tok.encode(val[0]))  # evaluation reads the prepared validation split


@pytest.mark.slow
def test_train_runs_on_a_prepared_directory(prepared, tmp_path, one_device_mesh):
    from gptx.train import pretrain

    out, _, _, tok = prepared
    tok.save(tmp_path / "tok.model")
    cfg = tiny_config()
    cfg.data.update(corpus=str(out), tokenizer=str(tmp_path / "tok.model"))
    cfg.train.update(steps=2, eval_every=2, ckpt_every=2)
    result = pretrain.run(cfg, str(tmp_path / "run"), one_device_mesh)
    assert int(result.state.step) == 2 and any("eval_loss" in h for h in result.history)
