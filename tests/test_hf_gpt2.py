"""A Hugging Face GPT-2 checkpoint through gptx, as a user runs it: `convert` imports the weights, the tokenizer
and the config; `sample` then continues prompts exactly as transformers' greedy `generate` does (GPT-2's
byte-level BPE, no BOS before a prompt); `convert --direction=export` writes a directory that transformers'
Auto classes load with the same ids and logits; continued `train` and `finetune` start from the converted run.

The reference is a random-weight `GPT2LMHeadModel` with GPT-2's real 50,257-token vocabulary, saved by
`save_pretrained` beside OpenAI's tokenizer files from ../shared/data/gpt2_tokenizer.
"""

import json
import shutil

import numpy as np
import pytest
from conftest import SHARED_DATA, tiny_config
from test_config import run_cli

from gptx.data import tokenizer as tokenizer_lib
from gptx.errors import InteropError
from gptx.interop import workdir as interop_workdir
from gptx.models import GPT, GPTConfig

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

GPT2_TOKENIZER = SHARED_DATA / "gpt2_tokenizer"
pytestmark = pytest.mark.skipif(
    not (GPT2_TOKENIZER / "vocab.json").exists(), reason=f"GPT-2's tokenizer files not found in {GPT2_TOKENIZER}"
)

CONFIG = "--config=configs/gpt2.py:124m"  # the user's config; the converted run's own shape overrides its model
PROMPTS = [
    "Hello world",
    "The quick brown fox\njumps over",  # a newline inside the prompt
    "Ünïcode café — naïve 日本語",  # multi-byte characters, split across byte-level tokens
    " leading space",
    "a",
]
NEW_TOKENS = 16
ENDOFTEXT = 50256  # GPT-2's one special token: BOS, EOS and (for batching) pad


@pytest.fixture(scope="module")
def hf_tokenizer():
    """GPT-2's tokenizer as transformers builds it from OpenAI's files: the independent reference for ids."""
    tok = transformers.GPT2TokenizerFast.from_pretrained(str(GPT2_TOKENIZER))
    assert len(tok) == 50257  # transformers 5.x can silently build a one-token tokenizer (gpt2_tokenizer/README)
    return tok


@pytest.fixture(scope="module")
def hf_gpt2(tmp_path_factory, hf_tokenizer):
    """(directory, model): a random GPT2LMHeadModel saved with save_pretrained, GPT-2's tokenizer beside it."""
    config = transformers.GPT2Config(
        n_embd=32, n_layer=2, n_head=2, n_positions=64, bos_token_id=ENDOFTEXT, eos_token_id=ENDOFTEXT
    )
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config)
    with torch.no_grad():  # every weight random and large, so that greedy choices are far from ties
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    path = tmp_path_factory.mktemp("hf_gpt2")
    model.save_pretrained(path, safe_serialization=True)
    hf_tokenizer.save_pretrained(path)  # tokenizer.json + tokenizer_config.json
    for name in ("vocab.json", "merges.txt"):  # OpenAI's files, as hub GPT-2 directories also hold them
        shutil.copyfile(GPT2_TOKENIZER / name, path / name)
    return path, model.eval()


@pytest.fixture(scope="module")
def converted(tmp_path_factory, hf_gpt2):
    """(workdir, stdout) of `convert --hf_dir=HF_DIR --workdir=W`."""
    work = tmp_path_factory.mktemp("converted") / "run"
    out = run_cli("convert", CONFIG, f"--hf_dir={hf_gpt2[0]}", f"--workdir={work}")
    assert out.returncode == 0, out.stderr[-3000:]
    return work, out.stdout


def hf_logits(model, tokens: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.as_tensor(tokens)).logits.numpy()


def test_convert_imports_the_tokenizer_and_the_config(converted, hf_tokenizer):
    work, stdout = converted
    assert "tokenizer: bpe, 50257 ids, no BOS before prompts or documents" in stdout
    saved = json.loads((work / "config.json").read_text())
    assert {k: saved["model"][k] for k in ("vocab_size", "block_size", "n_layer", "n_head", "d_model")} == dict(
        vocab_size=50257, block_size=64, n_layer=2, n_head=2, d_model=32
    )
    tok = tokenizer_lib.load(tokenizer_lib.find(str(work)))
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.add_bos, tok.vocab_size) == (ENDOFTEXT,) * 3 + (False, 50257)
    for text in PROMPTS:
        assert tok.prompt(text) == hf_tokenizer(text).input_ids, text  # GPT-2 prompts start without BOS
        assert tok.decode(tok.encode(text)) == text


def test_greedy_samples_equal_transformers_generate(converted, hf_gpt2, hf_tokenizer):
    """`sample --checkpoint=W` with no model or tokenizer flags prints what transformers' greedy decoding of the
    original model continues each prompt with, byte for byte."""
    work, _ = converted
    expected = ""
    for prompt in PROMPTS:
        ids = hf_tokenizer(prompt, return_tensors="pt").input_ids
        out = hf_gpt2[1].generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=ENDOFTEXT
        )
        new = hf_tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True, clean_up_tokenization_spaces=False)
        assert new, prompt
        expected += f"--- {prompt!r}\n{prompt}{new}\n"
    out = run_cli(
        "sample", CONFIG, f"--checkpoint={work}", "--config.sample.temperature=0",
        f"--config.sample.max_new_tokens={NEW_TOKENS}", "--config.sample.stop=()",
        *[f"--prompt={p}" for p in PROMPTS],
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout == expected


def test_export_loads_in_transformers_auto_classes(converted, hf_gpt2, hf_tokenizer, tmp_path):
    work, _ = converted
    out = run_cli("convert", CONFIG, f"--workdir={work}", f"--hf_dir={tmp_path}", "--direction=export")
    assert out.returncode == 0, out.stderr[-3000:]

    auto_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    assert len(auto_tok) == 50257
    assert (auto_tok.bos_token_id, auto_tok.eos_token_id) == (ENDOFTEXT, ENDOFTEXT)
    for text in PROMPTS:
        assert auto_tok(text).input_ids == hf_tokenizer(text).input_ids, text

    model, loading = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), output_loading_info=True)
    assert not loading["missing_keys"] and not loading["unexpected_keys"]
    assert type(model).__name__ == "GPT2LMHeadModel"
    tokens = np.asarray([hf_tokenizer(" ".join(PROMPTS)).input_ids[:40]])
    np.testing.assert_allclose(hf_logits(model.eval(), tokens), hf_logits(hf_gpt2[1], tokens), atol=1e-5, rtol=0)


def test_openai_vocab_and_merges_alone_are_imported(hf_gpt2, hf_tokenizer, tmp_path):
    """A directory with OpenAI's vocab.json + merges.txt and no tokenizer.json (older hub checkpoints)."""
    for name in ("config.json", "model.safetensors", "vocab.json", "merges.txt"):
        shutil.copyfile(hf_gpt2[0] / name, tmp_path / name)
    tok, source = interop_workdir.hf_tokenizer(str(tmp_path), 50257)
    assert source == str(tmp_path) and (tok.eos_id, tok.add_bos) == (ENDOFTEXT, False)
    for text in PROMPTS:
        assert tok.prompt(text) == hf_tokenizer(text).input_ids, text


def test_a_tokenizer_larger_than_the_model_is_refused(tmp_path):
    small = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_embd=8, n_layer=1, n_head=2, vocab_size=1000))
    small.save_pretrained(tmp_path / "hf", safe_serialization=True)
    for name in ("vocab.json", "merges.txt"):
        shutil.copyfile(GPT2_TOKENIZER / name, tmp_path / "hf" / name)
    with pytest.raises(InteropError, match=r"50257 ids but .*config\.json has vocab_size=1000"):
        interop_workdir.import_checkpoint(tiny_config(), str(tmp_path / "hf"), str(tmp_path / "w"))
    assert not (tmp_path / "w").exists()  # refused before anything is written


def small_corpus(tmp_path) -> str:
    lines = (SHARED_DATA / "tinyshakespeare" / "input.txt").read_text().splitlines()[:400]
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_continued_train_needs_no_model_flags(converted, tmp_path):
    work = tmp_path / "run"
    shutil.copytree(converted[0], work)
    out = run_cli(
        "train", CONFIG, f"--workdir={work}", f"--config.data.corpus={small_corpus(tmp_path)}",
        "--config.train.steps=2", "--config.train.batch_size=2", "--config.data.seq_len=16",
        "--config.train.eval_every=2", "--config.train.eval_batches=1", "--config.train.progress=False",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert "trained to step 2" in out.stdout


FINETUNE = [
    "--config.finetune.epochs=0", "--config.train.steps=2", "--config.train.batch_size=2",
    "--config.finetune.train_limit=8", "--config.finetune.eval_limit=4", "--config.data.seq_len=32",
    "--config.train.progress=False",
]  # fmt: skip


def finetune_from(work, tmp_path, *flags: str) -> dict:
    out = run_cli(
        "finetune", "--config=configs/finetune.py:sst2", f"--workdir={tmp_path / 'ft'}",
        f"--config.finetune.init_from={work}", *FINETUNE, *flags,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads((tmp_path / "ft" / "finetune_results.json").read_text())


def test_finetune_grows_the_embedding_with_no_flags(converted, tmp_path):
    results = finetune_from(converted[0], tmp_path)
    assert results["special_tokens"]["start"] == 50257


@pytest.mark.slow  # about a minute of compiling on 2 cores
def test_finetune_starts_from_the_converted_run(converted, tmp_path):
    """The fine-tuning tokens go after GPT-2's 50,257 ids, so the converted token table grows by three rows."""
    results = finetune_from(converted[0], tmp_path, "--config.model.vocab_size=50260")
    assert results["init_from"] == str(converted[0]) and results["steps"] == 2
    special = results["special_tokens"]
    assert (special["start"], special["delim"], special["extract"]) == (50257, 50258, 50259)
    assert np.isfinite(results["final_train_loss"])


def test_a_bpe_tokenizer_trained_by_gptx_round_trips_through_export(tmp_path, one_device_mesh):
    """A gptx run with its own byte-level BPE, exported: transformers' Auto classes give gptx's ids (BOS first,
    as gptx's models are trained) and gptx's logits."""
    from gptx.train import pretrain

    cfg = tiny_config()
    cfg.tokenizer.kind = "bpe"
    cfg.train.update(steps=2, eval_every=100, ckpt_every=2)
    run = str(tmp_path / "run")
    result = pretrain.run(cfg, run, one_device_mesh)
    interop_workdir.export_checkpoint(cfg, run, str(tmp_path / "hf"), mesh=one_device_mesh)

    tok = tokenizer_lib.load(tokenizer_lib.find(run))
    auto_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    texts = ["First Citizen:\nBefore we proceed any further, hear me speak.", "Ünïcode — 日本語", "x"]
    for text in texts:
        assert auto_tok(text).input_ids == tok.prompt(text), text
        assert auto_tok.decode(tok.encode(text)) == text

    model = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf")).eval()
    tokens = np.asarray([tok.prompt(" ".join(texts))[:32]], np.int32)
    ours = GPT(GPTConfig.from_config(cfg.model)).apply({"params": result.state.params}, tokens)
    np.testing.assert_allclose(hf_logits(model, tokens), np.asarray(ours), atol=1e-5, rtol=0)
