"""Test setup: 8 simulated CPU devices for mesh tests (set before JAX initialises its backend) and one persistent
XLA compilation cache for the run."""

import getpass
import os
import pathlib
import sys
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Compiling, not running, is most of a tiny-model test's time, and many tests (and the CLI subprocesses they
# start, which inherit these variables) compile the same programs: share the executables through JAX's
# persistent cache. Entries are keyed by the program, the devices and the jax version, so a stale one is never
# used; a cache read error only costs a recompilation.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), f"gptx-tests-xla-cache-{getpass.getuser()}")
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax  # noqa: E402
import ml_collections  # noqa: E402
import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
sys.path.insert(0, str(REPO))


def load_config(name: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """get_config(arg) of configs/NAME.py, as `--config=configs/NAME.py:ARG` would load it."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"configs_{name}", REPO / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config() if arg is None else module.get_config(arg)


def tiny_config(**model) -> ml_collections.ConfigDict:
    """A seconds-to-train config on the bundled corpus, one device."""
    from gptx import config

    c = config.default()
    c.model.update(
        {
            **dict(vocab_size=512, block_size=32, n_layer=2, n_head=2, d_model=32, dropout=0.0, attn_dropout=0.0),
            **model,
        }
    )
    c.tokenizer.vocab_size = 512
    c.data.update(seq_len=32)
    c.train.update(
        steps=8,
        batch_size=8,
        lr=1e-3,
        warmup_steps=2,
        log_every=1,
        eval_every=4,
        eval_batches=2,
        ckpt_every=4,
        progress=False,
        async_ckpt=False,
    )
    c.mesh.update(data=1, fsdp=1, tensor=1)
    return c


@pytest.fixture
def one_device_mesh():
    from gptx import mesh

    c = tiny_config()
    return mesh.make_mesh(c.mesh, devices=jax.devices()[:1])


# The modules holding the suite's longest tests (end-to-end CLI runs of a minute or more), started first: the
# two xdist workers take whole modules in collection order (--dist loadscope), and a long module taken last
# leaves the other worker idle while it finishes.
LONGEST_FIRST = ("test_demo.py", "test_multihost.py", "test_scaling.py")


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: item.path.name not in LONGEST_FIRST)  # stable: the order within stays
