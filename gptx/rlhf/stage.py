"""The `rlhf` stage of `gptx.main demo`: InstructGPT in miniature, measured by a labeler no gptx code controls.

The task is lm-human-preferences' "continue positively": the pretrained demo model continues two lines of the
corpus. SFT teaches it to answer with one line and EOS; the VADER sentiment lexicon plays the human labelers and
ranks K = 4 SFT samples per prompt; the reward model learns those rankings (all 6 pairs of a prompt in one batch
element); PPO optimises the reward model, once plainly and once with PPO-ptx; VADER then judges held-out samples.

DEMO holds the overrides of the three stages' configs; configs/{sft,rm,ppo}.py apply the same ones for `:demo`.
"""

from __future__ import annotations

import json
import os
import time

import ml_collections

# The three steps' defaults for the demo-sized model (configs/{sft,rm,ppo}.py start from them). InstructGPT's own
# numbers (App. C) are for 1.3B-175B models: SFT 16 epochs, cosine decay, residual dropout 0.2, lr 9.65e-6; RM
# one epoch, lr 9e-6; PPO lr 9.65e-6 (1.3B), β = 0.02, ptx_coef 27.8. A tiny model needs larger steps.
RECIPES = {
    "sft": {
        "model": {"dropout": 0.2, "attn_dropout": 0.0},  # the paper's residual dropout
        "train": {
            "batch_size": 32,
            "lr": 1e-4,
            "warmup_steps": 10,
            "min_lr_ratio": 0.0,
            "weight_decay": 0.0,
            "log_every": 10,
            "eval_every": 50,
            "eval_batches": 4,
            "ckpt_every": 50,
            "keep_ckpts": 4,
        },
        "rlhf": {"epochs": 16.0, "max_prompt_len": 80, "max_response_len": 48},
    },
    "rm": {
        "model": {"dropout": 0.0, "attn_dropout": 0.0},
        "train": {
            "batch_size": 16,
            "lr": 1e-4,
            "warmup_steps": 5,
            "min_lr_ratio": 0.1,
            "weight_decay": 0.0,
            "log_every": 10,
            "eval_every": 50,
            "eval_batches": 8,
            "ckpt_every": 1000,
            "keep_ckpts": 1,
        },
        "rlhf": {
            "comparisons": "hh_rlhf",
            "prompts": "hh_rlhf",
            "epochs": 1.0,
            "max_prompt_len": 80,
            "max_response_len": 48,
            "rollout_batch": 64,
            "norm_samples": 256,
        },
    },
    "ppo": {
        "model": {"dropout": 0.0, "attn_dropout": 0.0},  # PPO runs every network deterministically
        "train": {
            "lr": 2e-5,
            "warmup_steps": 0,
            "min_lr_ratio": 1.0,
            "b2": 0.999,
            "eps": 1e-5,
            "weight_decay": 0.0,
            "log_every": 5,
            "ckpt_every": 25,
            "keep_ckpts": 2,
        },
        "rlhf": {
            "prompts": "hh_rlhf",
            "comparisons": "hh_rlhf",
            "iterations": 100,
            "rollout_batch": 64,
            "minibatch": 16,
            "ppo_epochs": 4,
            "temperature": 0.7,
            "kl_coef": 0.15,
            "adaptive_kl": True,
            "kl_target": 6.0,
            "kl_horizon": 10000,
            "value_lr": 1e-4,
            "ptx_coef": 0.0,
            "ptx_batch": 8,
            "max_prompt_len": 80,
            "max_response_len": 48,
            "eval_prompts": 128,
        },
    },
}
_CORPUS = {"corpus": "bundled:tinyshakespeare", "doc_separator": "blank_line"}
_LENGTHS = {"max_prompt_len": 32, "max_response_len": 24}
# `:demo`: the offline sentiment task on the bundled corpus.
DEMO = {
    "sft": {
        "data": {**_CORPUS, "seq_len": 56},
        "rlhf": {"demonstrations": "corpus", "prompts": "corpus", "corpus_prompt_lines": 2, "epochs": 1.0, **_LENGTHS},
    },
    "rm": {
        "data": {**_CORPUS, "seq_len": 56},
        "train": {"lr": 3e-4},
        "rlhf": {
            "comparisons": "labeler",
            "labeler": "vader",
            "prompts": "corpus",
            "k": 4,
            "label_prompts": 2048,
            "epochs": 2.0,
            "temperature": 0.7,
            **_LENGTHS,
        },
    },
    "ppo": {
        "data": {**_CORPUS, "seq_len": 64},
        "train": {"lr": 1e-4},
        "rlhf": {
            "prompts": "corpus",
            "comparisons": "labeler",
            "labeler": "vader",
            "iterations": 30,
            "kl_coef": 0.2,
            "kl_target": 6.0,
            "kl_horizon": 1000,
            **_LENGTHS,
        },
    },
}
PTX_COEF = 1.0  # the demo's PPO-ptx coefficient (InstructGPT's 27.8 goes with pretraining batches 8x the PPO one)
DEMO_MODEL = {
    "name": "demo",
    "arch": "gpt2",
    "vocab_size": 1024,
    "block_size": 128,
    "n_layer": 4,
    "n_head": 4,
    "d_model": 128,
}


def apply(c: ml_collections.ConfigDict, overrides: dict) -> ml_collections.ConfigDict:
    for section, values in overrides.items():
        c[section].update(values)
    return c


def step_config(step: str, arg: str = "") -> ml_collections.ConfigDict:
    """The config of `configs/{step}.py[:arg]`: the demo model, the step's recipe, the demo task for 'demo'."""
    from gptx.config import default

    if arg not in ("", "demo"):
        raise ValueError(f"configs/{step}.py takes no argument or 'demo', got {arg!r}")
    c = default()
    c.model.update(DEMO_MODEL)
    c.tokenizer.vocab_size = DEMO_MODEL["vocab_size"]
    c.mesh.update(data=-1, fsdp=1, tensor=1)
    apply(c, RECIPES[step])
    return apply(c, DEMO[step]) if arg == "demo" else c


def stage_config(demo_cfg: ml_collections.ConfigDict, step: str, workdir: str) -> ml_collections.ConfigDict:
    """The demo's config of one step: its model, tokenizer and mesh, the step's recipe and demo overrides."""
    c = step_config(step, "demo")
    for key, value in demo_cfg.model.items():
        if key not in ("dropout", "attn_dropout"):  # each step sets its own
            c.model[key] = value
    c.tokenizer.update(demo_cfg.tokenizer.to_dict())
    c.mesh.update(demo_cfg.mesh.to_dict())
    c.data.tokenizer = os.path.join(workdir, "tokenizer.model")
    c.train.progress = False
    return c


def plot(histories: dict[str, list[dict]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    for name, hist in histories.items():
        steps = [h["step"] for h in hist]
        for ax, key in zip(axes, ("score", "kl", "response_length"), strict=True):
            ax.plot(steps, [h[key] for h in hist], label=name)
            ax.set(
                xlabel="PPO iteration",
                title={
                    "score": "normalised RM score",
                    "kl": "KL(π || SFT), nats",
                    "response_length": "response tokens",
                }[key],
            )
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(cfg: ml_collections.ConfigDict, workdir: str, report) -> dict:
    """Runs SFT, RM, PPO and PPO-ptx under WORKDIR/rlhf/ from WORKDIR/pretrain; writes the report section."""
    from gptx.rlhf import ppo, reward, sft
    from gptx.train import logs

    t0 = time.perf_counter()
    pretrained = os.path.join(workdir, "pretrain")
    if not os.path.isdir(os.path.join(pretrained, "checkpoints")):
        raise FileNotFoundError(f"the rlhf stage starts from {pretrained}: run the pretrain stage first")
    root = os.path.join(workdir, "rlhf")
    dirs = {k: os.path.join(root, k) for k in ("sft", "rm", "ppo", "ppo_ptx")}
    c_sft = stage_config(cfg, "sft", workdir)
    c_sft.rlhf.init_from = pretrained
    out = {"sft": sft.run(c_sft, dirs["sft"])}
    c_rm = stage_config(cfg, "rm", workdir)
    c_rm.rlhf.init_from = dirs["sft"]
    out["rm"] = reward.run(c_rm, dirs["rm"])
    for name, coef in (("ppo", 0.0), ("ppo_ptx", PTX_COEF)):
        c_ppo = stage_config(cfg, "ppo", workdir)
        c_ppo.rlhf.update(init_from=dirs["sft"], reward_from=dirs["rm"], ptx_coef=coef)
        out[name] = ppo.run(c_ppo, dirs[name])
    with open(os.path.join(root, "summary.json"), "w") as f:
        json.dump(out, f, indent=2)
    plot({n: logs.read_metrics(dirs[n]) for n in ("ppo", "ppo_ptx")}, report.image_path("rlhf_ppo.png"))
    report.section("rlhf", section(out, c_rm, time.perf_counter() - t0))
    return out


def section(out: dict, c_rm, seconds: float) -> str:
    rm, p, q = out["rm"], out["ppo"], out["ppo_ptx"]
    lab_p, lab_q = p["labeler"], q["labeler"]
    rows = [
        ("SFT", f"{p['sft']['score']:+.3f}", f"{lab_p['sft']:+.3f}", "", "0", f"{p['pretrain_loss']['sft']:.3f}"),
        (
            "PPO",
            f"{p['ppo']['score']:+.3f}",
            f"{lab_p['ppo']:+.3f}",
            f"{lab_p['win_rate']:.3f}",
            f"{p['ppo']['kl']:.2f}",
            f"{p['pretrain_loss']['ppo']:.3f}",
        ),
        (
            f"PPO-ptx (γ = {PTX_COEF:g})",
            f"{q['ppo']['score']:+.3f}",
            f"{lab_q['ppo']:+.3f}",
            f"{lab_q['win_rate']:.3f}",
            f"{q['ppo']['kl']:.2f}",
            f"{q['pretrain_loss']['ppo']:.3f}",
        ),
    ]
    table = "\n".join("| " + " | ".join(r) + " |" for r in rows)
    cell = lambda text: repr(text).replace("|", "\\|")  # noqa: E731
    examples = "\n".join(
        f"| {cell(e['prompt'].strip()[-60:])} | {cell(e['sft'])} | {cell(e['ppo'])} |" for e in p["examples"][:4]
    )
    return (
        "## InstructGPT in miniature (SFT → reward model → PPO-ptx)\n\n"
        "The task of lm-human-preferences' sentiment experiment: continue two lines of the corpus positively. "
        f"SFT on {out['sft']['train_examples']:,} next-line demonstrations; the VADER sentiment lexicon ranks "
        f"K = {c_rm.rlhf.k} SFT samples of {rm['train_comparisons']:,} prompts (all C(K, 2) pairs of a prompt in one "
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
