"""Evaluation at intermediate checkpoints (config.scaling.eval_at): the segmented run is the uninterrupted one, each
requested step is evaluated once on the checkpoint of that step, and a resumed run does not evaluate twice."""

import pytest
from conftest import tiny_config

from gptx.errors import ConfigError
from gptx.scaling import midrun, runs
from gptx.train import checkpoints, logs, pretrain


def test_eval_steps_are_distinct_steps_inside_the_run():
    assert midrun.eval_steps((0.25, 0.5, 0.5, 0.999), 8) == [2, 4]  # 0.999 * 8 rounds to the last step: not mid-run
    assert midrun.eval_steps((), 8) == []


def test_eval_at_must_hold_fractions():
    cfg = tiny_config()
    cfg.scaling.eval_at = (0.5, 1.0)
    with pytest.raises(ConfigError, match="eval_at"):
        runs.validate_scaling(cfg.scaling)


def _losses(run_dir) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in logs.read_metrics(run_dir) if "loss" in r}


def test_segmented_run_equals_the_uninterrupted_one_with_an_evaluation_per_step(tmp_path):
    cfg = tiny_config()
    cfg.train.update(steps=8, eval_every=8, ckpt_every=8, warmup_steps=2)
    cfg.mesh.data = -1  # the test session's 8 simulated devices, as a sweep run gets them
    cfg.scaling.eval_at = (0.5,)
    pretrain.run(cfg, str(tmp_path / "whole"))

    seen = []

    def evaluate(c, run_dir):  # the checkpoint an evaluation reads is the latest one: the requested step's
        seen.append(checkpoints.latest_step(run_dir))
        return {"task": {"step": seen[-1]}}

    out = midrun.train(cfg, str(tmp_path / "seg"), evaluate, tokens_per_step=256, flops_per_token=10.0)
    assert seen == [4]
    assert [r["step"] for r in out] == [4] and out[0]["eval"]["task"]["step"] == 4
    assert out[0]["compute"] == 4 * 256 * 10.0
    whole, seg = _losses(tmp_path / "whole"), _losses(tmp_path / "seg")
    assert sorted(seg) == list(range(1, 9))
    assert [seg[s] for s in range(1, 9)] == pytest.approx([whole[s] for s in range(1, 9)], rel=1e-5)
    # a resumed sweep reads the stored evaluations back instead of evaluating again
    again = midrun.train(cfg, str(tmp_path / "seg"), evaluate, tokens_per_step=256, flops_per_token=10.0)
    assert again == out and seen == [4]
