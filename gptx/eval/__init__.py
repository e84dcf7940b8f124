"""In-context learning evaluation: requests, tasks, 0/1/K-shot prompts and metrics (GPT-2/GPT-3 style).

`requests.LM` scores log-likelihoods, rolling log-likelihoods and generations on a gptx model; `tasks.TASKS`
holds declarative task entries; `harness` builds the prompts and scores them; `metrics` holds acc, acc_norm,
acc_uncond, exact match, standard errors and the model-graded hook; `command` is `gptx.main eval`;
`lm_eval_adapter` plugs gptx models into lm-evaluation-harness (optional `lm_eval` extra).
"""

from gptx.eval.requests import LM, Loglikelihood, Rolling

__all__ = ["LM", "Loglikelihood", "Rolling"]
