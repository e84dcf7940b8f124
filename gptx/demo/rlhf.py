"""The demo's `rlhf` stage: InstructGPT in miniature, measured by a labeler no gptx code controls.

The task is lm-human-preferences' "continue positively": the pretrained demo model continues two lines of the
corpus. SFT teaches it to answer with one line and EOS; the VADER sentiment lexicon plays the human labelers and
ranks K = 4 SFT samples per prompt; the reward model learns those rankings (all 6 pairs of a prompt in one batch
element); PPO optimises the reward model, once plainly and once with PPO-ptx; VADER then judges held-out samples.

Each step runs with its `configs/{sft,rm,ppo}.py:demo` config (gptx/rlhf/recipes.py) on the demo's model,
tokenizer and mesh.
"""

from __future__ import annotations

import os
import time

import ml_collections

from gptx.demo import report as report_lib
from gptx.rlhf import ppo_run, recipes, reward, sft
from gptx.train import logs, pretrain

PTX_COEF = 1.0  # the demo's PPO-ptx coefficient (InstructGPT's 27.8 goes with pretraining batches 8x the PPO one)


def stage_config(demo_cfg: ml_collections.ConfigDict, step: str, workdir: str) -> ml_collections.ConfigDict:
    """The demo's config of one step: its model, tokenizer and mesh, the step's recipe and demo overrides."""
    c = recipes.step_config(step, "demo")
    for key, value in demo_cfg.model.items():
        if key not in ("dropout", "attn_dropout"):  # each step sets its own
            c.model[key] = value
    c.tokenizer.update(demo_cfg.tokenizer.to_dict())
    c.mesh.update(demo_cfg.mesh.to_dict())
    c.data.tokenizer = pretrain.tokenizer_path(demo_cfg, workdir)
    c.train.progress = False
    return c


def run_steps(cfg: ml_collections.ConfigDict, workdir: str, dirs: dict[str, str]) -> dict:
    """SFT from WORKDIR/pretrain, the reward model from SFT, then PPO and PPO-ptx; {step: its run's result}."""
    c_sft = stage_config(cfg, "sft", workdir)
    c_sft.rlhf.init_from = os.path.join(workdir, "pretrain")
    out = {"sft": sft.run(c_sft, dirs["sft"])}
    c_rm = stage_config(cfg, "rm", workdir)
    c_rm.rlhf.init_from = dirs["sft"]
    out["rm"] = reward.run(c_rm, dirs["rm"])
    for name, coef in (("ppo", 0.0), ("ppo_ptx", PTX_COEF)):
        c_ppo = stage_config(cfg, "ppo", workdir)
        c_ppo.rlhf.update(init_from=dirs["sft"], reward_from=dirs["rm"], ptx_coef=coef)
        out[name] = ppo_run.run(c_ppo, dirs[name])
    return out


def stage(cfg: ml_collections.ConfigDict, workdir: str, report: report_lib.Report) -> None:
    """InstructGPT in miniature: SFT, a reward model of VADER's rankings, PPO and PPO-ptx under WORKDIR/rlhf/ from
    WORKDIR/pretrain; writes WORKDIR/rlhf/summary.json, the PPO curves and the report section."""
    t0 = time.perf_counter()
    pretrained = os.path.join(workdir, "pretrain")
    if not os.path.isdir(os.path.join(pretrained, "checkpoints")):
        raise FileNotFoundError(f"the rlhf stage starts from {pretrained}: run the pretrain stage first")
    root = os.path.join(workdir, "rlhf")
    dirs = {k: os.path.join(root, k) for k in ("sft", "rm", "ppo", "ppo_ptx")}
    out = run_steps(cfg, workdir, dirs)
    logs.write_json(os.path.join(root, "summary.json"), out)
    report_lib.plot_ppo({n: logs.read_metrics(dirs[n]) for n in ("ppo", "ppo_ptx")}, report.image_path("rlhf_ppo.png"))
    k = stage_config(cfg, "rm", workdir).rlhf.k
    report.section("rlhf", section(out, k, time.perf_counter() - t0))


def _policy_rows(out: dict) -> list[tuple[str, ...]]:
    """(policy, RM score, VADER score, VADER win rate, KL, pretraining loss) of SFT, PPO and PPO-ptx."""
    p, q = out["ppo"], out["ppo_ptx"]
    lab_p, lab_q = p["labeler"], q["labeler"]
    sft_row = ("SFT", f"{p['sft']['score']:+.3f}", f"{lab_p['sft']:+.3f}", "", "0", f"{p['pretrain_loss']['sft']:.3f}")
    rows = [sft_row]
    for name, r, lab in (("PPO", p, lab_p), (f"PPO-ptx (γ = {PTX_COEF:g})", q, lab_q)):
        rows.append(
            (
                name,
                f"{r['ppo']['score']:+.3f}",
                f"{lab['ppo']:+.3f}",
                f"{lab['win_rate']:.3f}",
                f"{r['ppo']['kl']:.2f}",
                f"{r['pretrain_loss']['ppo']:.3f}",
            )
        )
    return rows


def section(out: dict, k: int, seconds: float) -> str:
    """The report section of the stage's results `out` (K: samples ranked per prompt)."""
    rm, p = out["rm"], out["ppo"]
    table = "\n".join("| " + " | ".join(r) + " |" for r in _policy_rows(out))
    cell = lambda text: repr(text).replace("|", "\\|")  # noqa: E731
    examples = "\n".join(
        f"| {cell(e['prompt'].strip()[-60:])} | {cell(e['sft'])} | {cell(e['ppo'])} |" for e in p["examples"][:4]
    )
    return (
        "## InstructGPT in miniature (SFT → reward model → PPO-ptx)\n\n"
        "The task of lm-human-preferences' sentiment experiment: continue two lines of the corpus positively. "
        f"SFT on {out['sft']['train_examples']:,} next-line demonstrations; the VADER sentiment lexicon ranks "
        f"K = {k} SFT samples of {rm['train_comparisons']:,} prompts (all C(K, 2) pairs of a prompt in one "
        f"batch element; {rm['all_tied_prompts']} prompts whose samples all tied were left out); the reward model "
        f"reaches **{rm['test']['pairwise_accuracy']:.3f}** pairwise accuracy on {rm['test']['pairs']} held-out "
        "pairs (chance 0.5). PPO then optimises it with a per-token KL penalty to SFT; VADER judges "
        f"{p['eval_prompts']} held-out prompts.\n\n"
        "| policy | RM score (normalised) | VADER score | VADER win rate vs SFT | KL to SFT (nats) | "
        "pretraining loss |\n|---|---|---|---|---|---|\n"
        f"{table}\n\n![PPO curves](report/rlhf_ppo.png)\n\n"
        f"| prompt (end) | SFT sample | PPO sample |\n|---|---|---|\n{examples}\n\n"
        f"Stage took {seconds:.0f} s.\n"
    )
