"""The house rules, checked on the source: models import no trainer, sampler or data code; one module builds
checkpoint managers; the import graph (function-level imports included) has no cycle; files stay small."""

import ast
import pathlib

GPTX = pathlib.Path(__file__).resolve().parents[1] / "gptx"
MODEL_DEPS = ("gptx.models", "gptx.mesh", "gptx.config", "gptx.errors")


def modules() -> dict[str, pathlib.Path]:
    out = {}
    for path in GPTX.rglob("*.py"):
        parts = path.relative_to(GPTX.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def gptx_imports(name: str, path: pathlib.Path, known: set[str]) -> set[str]:
    """Every gptx module `name` imports, at module level or inside functions (`from gptx.a import b` names
    gptx.a.b when that is a module, else gptx.a)."""
    out = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("gptx")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            if base.startswith("gptx"):
                out |= {f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names}
    return out - {name}


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: gptx_imports(name, path, set(mods)) & set(mods) for name, path in mods.items()}


def test_models_import_only_models_mesh_config_and_errors():
    for name, deps in graph().items():
        if name.startswith("gptx.models"):
            bad = [d for d in deps if not d.startswith(MODEL_DEPS)]
            assert not bad, f"{name} imports {bad}"


def test_the_import_graph_has_no_cycle():
    g = graph()
    # A package's __init__ importing its own submodules is not a cycle of behaviour; leave those edges out.
    g = {
        m: {d for d in deps if not (d.startswith(m + ".") and GPTX.joinpath(*m.split(".")[1:], "__init__.py").exists())}
        for m, deps in g.items()
    }
    state: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for d in g.get(m, ()):
            assert state.get(d) != 1, "import cycle: " + " -> ".join([*stack[stack.index(d) :], d])
            if d not in state:
                visit(d, [*stack, d])
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m, [m])


def test_one_module_builds_checkpoint_managers():
    users = sorted(str(p.relative_to(GPTX)) for p in GPTX.rglob("*.py") if "CheckpointManager(" in p.read_text())
    assert users == ["train/checkpoints.py"]


def test_no_source_file_is_over_500_lines():
    long = {str(p.relative_to(GPTX)): n for p in GPTX.rglob("*.py") if (n := len(p.read_text().splitlines())) > 500}
    assert not long
