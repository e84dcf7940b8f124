"""In-context learning evaluation: requests, tasks, 0/1/K-shot prompts and metrics (GPT-2/GPT-3 style).

`requests.LM` scores log-likelihoods, rolling log-likelihoods and generations (greedy or n samples) on a gptx
model; `tasks` holds the Task type and the named readers and processors a file cannot express; `taskfile`
loads tasks and groups from YAML/JSON files (`builtin/` holds every built-in task), `records` reads their data
files and `templates` renders their Jinja2 prompts (with the named `filters`); `harness` builds the prompts and
scores them; `metrics` holds acc, acc_norm, acc_uncond, exact match, pass@k, standard errors and the model-graded
hook, `overlap` token F1 and ROUGE, `corpus_metrics` BLEU and chrF; `code` and `sandbox` run generated programs
against unit tests; `command` is `gptx.main eval`; `lm_eval_adapter` plugs gptx models into lm-evaluation-harness.
"""

from gptx.eval.requests import LM, Loglikelihood, Rolling

__all__ = ["LM", "Loglikelihood", "Rolling"]
