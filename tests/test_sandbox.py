"""Model-written code runs contained: a program that loops, forks, eats memory, writes outside its directory or
opens a socket is stopped and reported, and the harness goes on; pass@k is Chen et al.'s unbiased estimator
(checked against exact binomials and a brute-force enumeration of k-subsets)."""

import itertools
import math
import os
import time
from fractions import Fraction

import pytest

from gptx.eval import sandbox
from gptx.eval.metrics import pass_at_k

FAST = sandbox.Limits(timeout_s=2.0, cpu_s=2, memory_mb=256)


def run(program: str, limits: sandbox.Limits = FAST) -> sandbox.Result:
    return sandbox.run_program(program, limits)


def test_a_correct_program_passes_and_a_failing_assert_fails():
    assert run("def f(x):\n    return 2 * x\nassert f(2) == 4\n").status == sandbox.PASSED
    failed = run("def f(x):\n    return 2 * x\nassert f(2) == 5, 'f(2)'\n")
    assert failed.status == sandbox.FAILED and "f(2)" in failed.detail


@pytest.mark.parametrize(
    ("program", "detail"),
    [
        ("raise ValueError('bad')", "ValueError: bad"),
        ("def f(:\n    pass", "SyntaxError"),
        ("import os\nos._exit(0)", "exited before its tests finished"),  # an early exit is not a pass
        ("raise SystemExit(0)", "SystemExit"),
    ],
)
def test_exceptions_syntax_errors_and_early_exits_are_errors(program, detail):
    result = run(program)
    assert result.status == sandbox.ERROR and detail in result.detail


def test_an_infinite_loop_times_out_and_its_process_group_is_killed():
    t0 = time.perf_counter()
    result = run("while True:\n    pass\n", sandbox.Limits(timeout_s=1.0, cpu_s=5, memory_mb=256))
    assert result.status == sandbox.TIMEOUT
    assert time.perf_counter() - t0 < 4.0  # killed, not waited for


def test_the_cpu_limit_is_enforced_by_the_kernel():
    # A wall-clock limit far away: only RLIMIT_CPU can stop the loop.
    result = run("while True:\n    pass\n", sandbox.Limits(timeout_s=30.0, cpu_s=1, memory_mb=256))
    assert result.status == sandbox.TIMEOUT and result.detail == "CPU limit"


def test_a_fork_bomb_is_contained_and_the_harness_survives():
    bomb = run("import os\nwhile True:\n    os.fork()\n")
    assert bomb.status == sandbox.ERROR and "fork" in bomb.detail
    spawn = run("import subprocess\nsubprocess.run(['sleep', '100'])\n")
    assert spawn.status == sandbox.ERROR and "subprocess.Popen" in spawn.detail
    assert run("assert True").status == sandbox.PASSED  # the next program runs as usual


def test_allocating_forever_is_stopped_by_the_memory_limit():
    result = run("blocks = []\nwhile True:\n    blocks.append(bytearray(10**7))\n")
    assert result.status == sandbox.ERROR and "MemoryError" in result.detail


def test_writes_outside_the_working_directory_are_blocked(tmp_path):
    outside, victim = tmp_path / "escape.txt", tmp_path / "keep.txt"
    victim.write_text("data")
    for program in (
        f"open({str(outside)!r}, 'w').write('x')",
        f"import os\nos.open({str(outside)!r}, os.O_WRONLY | os.O_CREAT)",
        f"import os\nos.remove({str(victim)!r})",
        f"import os\nos.symlink({str(victim)!r}, 'link')",
        "import os\nos.chdir('..')",
        "import shutil\nshutil.rmtree('/tmp/none')",
    ):
        result = run(program)
        assert result.status == sandbox.ERROR and "sandbox:" in result.detail, program
    assert not outside.exists() and victim.read_text() == "data"
    # Inside its own directory a program may write, read and make directories; the directory goes afterwards.
    inside = "import os\nopen('a.txt', 'w').write('hi')\nos.mkdir('d')\nassert open('a.txt').read() == 'hi'\n"
    inside += "print(os.getcwd())\n"
    assert run(inside).status == sandbox.PASSED


def test_file_size_is_limited():
    result = run("open('big', 'wb').write(b'0' * (64 << 20))", sandbox.Limits(timeout_s=5, file_mb=1))
    assert result.status == sandbox.ERROR and "File too large" in result.detail


def test_no_network():
    for program in (
        "import socket\nsocket.socket()",
        "import socket\nsocket.create_connection(('127.0.0.1', 9))",
        "import urllib.request\nurllib.request.urlopen('http://127.0.0.1:9')",
        "import ctypes\nctypes.CDLL(None)",  # native code would bypass the audit hook
    ):
        result = run(program)
        assert result.status == sandbox.ERROR and "not allowed" in result.detail, program


def test_many_programs_keep_their_order():
    programs = [f"assert {i} % 2 == 0" for i in range(6)]
    statuses = [r.status for r in sandbox.run_programs(programs, FAST, workers=2)]
    assert statuses == [sandbox.PASSED, sandbox.FAILED] * 3


def test_the_working_directory_is_fresh_and_removed():
    marker = "import os\nassert os.listdir('.') == ['program.py'], os.listdir('.')\nopen('left.txt', 'w')\n"
    assert [r.status for r in sandbox.run_programs([marker, marker], FAST, workers=1)] == [sandbox.PASSED] * 2
    where = run("import os\nraise RuntimeError(os.getcwd())")
    home = where.detail.removeprefix("RuntimeError: ")
    assert os.path.basename(home).startswith("gptx_sandbox_") and not os.path.exists(home)


# pass@k ---------------------------------------------------------------------------------------------------------


def exact_pass_at_k(n: int, c: int, k: int) -> Fraction:
    """1 - C(n-c, k) / C(n, k) in exact rationals."""
    return 1 - Fraction(math.comb(n - c, k), math.comb(n, k))


def brute_force_pass_at_k(n: int, c: int, k: int) -> Fraction:
    """The share of the k-subsets of n samples (the first c passing) that hold a passing sample."""
    subsets = list(itertools.combinations(range(n), k))
    return Fraction(sum(any(i < c for i in s) for s in subsets), len(subsets))


# (n, c, k, pass@k) worked by hand
TABLE = [
    (1, 0, 1, 0.0),
    (1, 1, 1, 1.0),
    (10, 1, 1, 0.1),  # pass@1 = c / n
    (10, 5, 1, 0.5),
    (10, 0, 10, 0.0),
    (10, 1, 10, 1.0),  # k = n: one pass among all samples
    (5, 2, 2, 0.7),  # 1 - C(3,2)/C(5,2) = 1 - 3/10
    (4, 1, 2, 0.5),  # 1 - C(3,2)/C(4,2) = 1 - 3/6
    (6, 3, 4, 1.0),  # n - c < k: every draw of 4 holds a pass
]


@pytest.mark.parametrize(("n", "c", "k", "expected"), TABLE)
def test_pass_at_k_on_a_hand_made_table(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)
    assert pass_at_k(n, c, k) == pytest.approx(float(brute_force_pass_at_k(n, c, k)), abs=1e-12)


def test_pass_at_k_equals_the_closed_form_and_the_enumeration():
    for n in range(1, 9):
        for c in range(n + 1):
            for k in range(1, n + 1):
                exact = exact_pass_at_k(n, c, k)
                assert exact == brute_force_pass_at_k(n, c, k)
                assert pass_at_k(n, c, k) == pytest.approx(float(exact), abs=1e-12)


def test_pass_at_k_is_stable_where_the_binomials_overflow_floats():
    # C(1000, 500) ~ 1e299 and C(2000, 1000) overflows a float: the product form never forms them.
    for n, c, k in ((200, 3, 100), (1000, 7, 500), (2000, 1, 1000), (2000, 1990, 1)):
        assert pass_at_k(n, c, k) == pytest.approx(float(exact_pass_at_k(n, c, k)), rel=1e-9)


def test_pass_at_k_rejects_impossible_counts():
    for n, c, k in ((3, 4, 1), (3, 1, 4), (3, 1, 0)):
        with pytest.raises(ValueError, match="pass@k"):
            pass_at_k(n, c, k)
