"""The quickstart notebook runs top to bottom on the public API, as a user would run it in Jupyter.

The cells run in order in one namespace (what a kernel does), with no command-line flags parsed: a notebook
that needed `absl` flags or `sys.argv` would fail here.
"""

import json
import shutil

import matplotlib
import pytest
from conftest import REPO

NOTEBOOK = REPO / "notebooks" / "quickstart.ipynb"


def code_cells(path) -> list[str]:
    nb = json.loads(path.read_text())
    assert nb["nbformat"] == 4
    return ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]


def test_notebook_is_clean_and_flag_free():
    nb = json.loads(NOTEBOOK.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(not c["outputs"] and c["execution_count"] is None for c in code), "commit the notebook without outputs"
    source = "\n".join(code_cells(NOTEBOOK))
    assert "import gptx" in source
    for forbidden in ("sys.argv", "absl", "flags", "subprocess", "gptx.main"):
        assert forbidden not in source, f"the notebook uses {forbidden}: command-line state"


@pytest.mark.filterwarnings("ignore:FigureCanvasAgg is non-interactive")
def test_quickstart_builds_trains_plots_and_samples():
    matplotlib.use("Agg")  # plt.show() is a no-op without a display
    import matplotlib.pyplot as plt

    ns: dict = {"__name__": "__main__"}
    try:
        for i, source in enumerate(code_cells(NOTEBOOK)):
            exec(compile(source, f"quickstart.ipynb[cell {i}]", "exec"), ns)
        # Trained: the loss fell from the uniform-guess level (ln 512 = 6.24) over 20 steps.
        train, evals = ns["train"], ns["evals"]
        assert [s for s, _ in train] == [5, 10, 15, 20]
        assert train[-1][1] < train[0][1] - 0.5 and evals, train
        # Plotted: the figure holds the train curve and the eval points.
        lines = ns["ax"].get_lines()
        assert len(lines) == 2 and list(lines[0].get_xdata()) == [s for s, _ in train]
        # Sampled: a continuation decoded from the checkpoint, at most max_new_tokens long.
        out = ns["out"]
        assert isinstance(out.texts[0], str) and 0 < len(out.tokens[0]) <= ns["sampling"].max_new_tokens
    finally:
        plt.close("all")
        if "workdir" in ns:
            shutil.rmtree(ns["workdir"], ignore_errors=True)
