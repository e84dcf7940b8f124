"""Predictable scaling (GPT-4 report) and compute-optimal allocation (Chinchilla).

`laws`: the loss fits and predictions; `capability`: the pass-rate law −E_P[log pass_rate] = α·C^−k;
`intervals` and `profile`: prediction intervals calibrated for few runs (delta-t, profile-t); `evals`: a run's
end-of-training evaluation, `midrun` at intermediate checkpoints; `capability_data`: generated problems of a
capability task and their mix into the corpus; `runs` + `capability_sweep`: sweeps through the training loop and the
`scaling {sweep,fit,predict}` command.
"""

from gptx.scaling.capability import (
    CapabilityLaw,
    PassCounts,
    fit_capability,
    measure_capability,
    pass_counts,
    predict_capability,
)
from gptx.scaling.laws import (
    COMPUTE_GRID,
    EPOCH_GRID,
    ChinchillaLaw,
    ComputeLaw,
    bootstrap_chinchilla,
    bootstrap_compute_law,
    bootstrap_weights,
    drop_highest_losses,
    fit_chinchilla,
    fit_compute_law,
    interval,
    predict_chinchilla,
    predict_compute,
)
from gptx.scaling.runs import (
    LAWS,
    PREDICTION,
    RESULTS,
    final_loss,
    fit_results,
    load_config_spec,
    plot_prediction,
    predict,
    read_results,
    run_command,
    run_size,
    scaling_defaults,
    schedule,
    sweep,
    train_run,
    validate_scaling,
)

__all__ = [
    "CapabilityLaw",
    "PassCounts",
    "fit_capability",
    "measure_capability",
    "pass_counts",
    "predict_capability",
    "COMPUTE_GRID",
    "EPOCH_GRID",
    "ChinchillaLaw",
    "ComputeLaw",
    "bootstrap_chinchilla",
    "bootstrap_compute_law",
    "bootstrap_weights",
    "drop_highest_losses",
    "fit_chinchilla",
    "fit_compute_law",
    "interval",
    "predict_chinchilla",
    "predict_compute",
    "LAWS",
    "PREDICTION",
    "RESULTS",
    "final_loss",
    "fit_results",
    "load_config_spec",
    "plot_prediction",
    "predict",
    "read_results",
    "run_command",
    "run_size",
    "scaling_defaults",
    "schedule",
    "sweep",
    "train_run",
    "validate_scaling",
]
