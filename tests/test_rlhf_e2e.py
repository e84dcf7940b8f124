"""The InstructGPT pipeline end to end on a tiny model: sft -> rm (VADER-ranked samples) -> ppo, through the
commands' run functions, judged by the labeler; and a PPO run that resumes from its checkpoint."""

import json
import os

import pytest
from conftest import tiny_config

from gptx.rlhf import ppo_run, recipes, reward, sft

pytestmark = pytest.mark.slow


def step_cfg(step: str, tok: str, **rlhf):
    c = tiny_config(vocab_size=512, block_size=64, n_layer=2, n_head=4, d_model=64)
    recipes.apply(c, recipes.RECIPES[step])
    recipes.apply(c, recipes.DEMO[step])
    c.model.update(vocab_size=512, block_size=64, n_layer=2, n_head=4, d_model=64, dropout=0.0)
    c.data.update(tokenizer=tok, seq_len=48)
    c.rlhf.update(max_prompt_len=24, max_response_len=16, rollout_batch=32, minibatch=8, eval_prompts=64)
    c.rlhf.update(rlhf)
    c.train.update(progress=False, async_ckpt=False)
    return c


def test_pipeline_raises_the_labelers_score_with_kl_under_target(tmp_path, one_device_mesh):
    mesh = one_device_mesh
    pytest.importorskip("vaderSentiment")
    from gptx.train import pretrain

    base = tiny_config(vocab_size=512, block_size=64, n_layer=2, n_head=4, d_model=64)
    base.data.seq_len = 64
    base.train.update(steps=300, batch_size=16, lr=3e-3, warmup_steps=20, ckpt_every=300, eval_every=300)
    pretrain.run(base, str(tmp_path / "pre"), mesh)
    tok = str(tmp_path / "pre" / "tokenizer.model")

    c = step_cfg("sft", tok, init_from=str(tmp_path / "pre"), epochs=0.0)
    c.train.update(steps=60, batch_size=16, lr=1e-3, ckpt_every=30, keep_ckpts=2)
    sft.run(c, str(tmp_path / "sft"), mesh)

    c = step_cfg("rm", tok, init_from=str(tmp_path / "sft"), label_prompts=2048, epochs=3.0, norm_samples=64)
    c.train.update(lr=1e-3, batch_size=16)
    rm = reward.run(c, str(tmp_path / "rm"), mesh)
    assert rm["test"]["pairwise_accuracy"] > 0.55  # chance: 0.5

    c = step_cfg(
        "ppo",
        tok,
        init_from=str(tmp_path / "sft"),
        reward_from=str(tmp_path / "rm"),
        iterations=40,
        kl_coef=0.3,
        kl_target=8.0,
        kl_horizon=300,  # 32 episodes an iteration: β moves by up to 2% per iteration
        ptx_coef=0.5,
        ptx_batch=4,
    )
    c.train.update(lr=2e-4, ckpt_every=20)
    res = ppo_run.run(c, str(tmp_path / "ppo"), mesh)
    assert res["ppo"]["score"] > res["sft"]["score"] + 0.5  # the RM score rises
    assert res["labeler"]["ppo"] > res["labeler"]["sft"]  # and so does the labeler's
    assert res["labeler"]["win_rate"] > 0.5
    assert res["ppo"]["kl"] < 8.0  # the adaptive controller holds the KL under its target

    # Resuming: a longer run continues from iteration 40 (policy, value, β and the ptx data position).
    c.rlhf.iterations = 41
    again = ppo_run.run(c, str(tmp_path / "ppo"), mesh)
    assert again["iterations"] == 41
    with open(os.path.join(tmp_path, "ppo", "metrics.jsonl")) as f:
        steps = [json.loads(line)["step"] for line in f]
    assert steps == list(range(1, 42))
