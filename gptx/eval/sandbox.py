"""Runs untrusted programs (a model's completion + a task's unit tests) in a separate, limited process.

Each program runs in a fresh Python interpreter (`python -I`, no user site, no PYTHONPATH) in a new session
(its own process group), in a fresh temporary working directory that is deleted afterwards, with:

  wall clock    `Limits.timeout_s`; the whole process group is SIGKILLed after the run, timed out or not, so
                nothing it started survives it
  CPU           RLIMIT_CPU (SIGXCPU when exceeded: reported as a timeout)
  memory        RLIMIT_AS (an allocation past it raises MemoryError: reported as an error)
  processes     RLIMIT_NPROC = 0 (no fork for a non-root user), and fork/exec/spawn/kill blocked by an audit
                hook (which also holds for root, whom RLIMIT_NPROC does not bind)
  files         RLIMIT_FSIZE (a write past it fails with EFBIG), writes, renames, removals and permission
                changes outside the working directory blocked by the audit hook
  network       a new, empty network namespace when the kernel allows it (root, or unprivileged user
                namespaces), and in any case socket creation blocked by the audit hook
  ctypes        loading a shared library blocked (it would bypass the hook)

What is NOT isolated: an audit hook is a guard rail inside the interpreter, not a security boundary. Code that
reaches native code by another path (a C extension already importable, a crafted object exploiting a CPython
bug) escapes it; reads are not restricted (the program can read any file the user can); without a network
namespace the hook is the only network barrier. Treat model-written code as hostile only behind a container
or VM as well (gVisor, nsjail, firejail); this module is what human-eval's `reliability_guard` offers, plus
limits enforced by the kernel and a process group that is always killed.

Outcomes per program (`Result.status`): "passed" (ran to the end and printed the run's nonce), "failed" (an
AssertionError: a unit test failed), "timeout" (wall clock or CPU limit), "error" (any other exception,
a blocked operation, a crash, or an exit before the tests finished).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import os
import secrets
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence

PASSED, FAILED, TIMEOUT, ERROR = "passed", "failed", "timeout", "error"
STATUSES = (PASSED, FAILED, TIMEOUT, ERROR)


@dataclasses.dataclass(frozen=True)
class Limits:
    timeout_s: float = 10.0  # wall clock, interpreter start-up included
    cpu_s: int = 10  # CPU seconds (RLIMIT_CPU)
    memory_mb: int = 1024  # address space (RLIMIT_AS)
    file_mb: int = 16  # largest file the program may write (RLIMIT_FSIZE)
    network_namespace: bool = True  # try a new network namespace (falls back to the socket hook alone)


@dataclasses.dataclass(frozen=True)
class Result:
    status: str  # one of STATUSES
    detail: str = ""  # the exception line, the blocked operation, or the signal
    seconds: float = 0.0


# The child's first code: limits, namespace, audit hook, then the program with fresh globals. Exit codes:
# 0 ran to the end, 3 AssertionError, 4 another exception or SystemExit. Success also prints the nonce (read
# from stdin before the program runs), so a program that calls os._exit(0) early is not counted as passing.
_BOOTSTRAP = r"""
import os, resource, signal, sys
nonce = sys.stdin.readline().strip()
cpu, mem, fsize, netns = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an oversized write raises OSError instead of killing
isolated_net = False
if netns:
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    for flags in (0x40000000, 0x40000000 | 0x10000000):  # CLONE_NEWNET; CLONE_NEWNET | CLONE_NEWUSER
        if libc.unshare(flags) == 0:
            isolated_net = True
            break
try:
    resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
except (ValueError, OSError):
    pass
home = os.path.realpath(os.getcwd())
WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
BLOCKED = ("os.fork", "os.forkpty", "os.posix_spawn", "os.spawn", "os.exec", "os.system", "os.kill",
           "os.killpg", "subprocess.Popen", "pty.spawn", "socket.__new__", "socket.connect", "socket.bind",
           "socket.getaddrinfo", "ctypes.dlopen", "ctypes.dlsym", "ctypes.call_function", "os.setuid",
           "resource.setrlimit", "resource.prlimit", "sys.addaudithook", "os.chroot", "shutil.unpack_archive")
PATH_WRITES = ("os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.symlink",
               "os.link", "os.truncate", "os.utime", "os.chdir", "shutil.rmtree", "shutil.copyfile",
               "shutil.move", "os.chflags", "os.setxattr", "os.removexattr")
def inside(path):
    if isinstance(path, int):
        return True  # an already open descriptor: its opening was checked
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    real = os.path.realpath(os.path.join(os.getcwd(), path))
    return real == home or real.startswith(home + os.sep) or real == os.devnull
def hook(event, args):
    if event in BLOCKED:
        raise PermissionError(f"sandbox: {event} is not allowed")
    if event == "open":
        path, mode, flags = args
        writes = (mode is not None and any(c in str(mode) for c in "wax+")) or (
            mode is None and isinstance(flags, int) and flags & WRITE)
        if writes and path is not None and not inside(path):
            raise PermissionError(f"sandbox: writing {path!r} outside the working directory")
    elif event in PATH_WRITES:
        paths = [a for a in args[:2] if isinstance(a, (str, bytes))] or [None]
        if not all(p is not None and inside(p) for p in paths):
            raise PermissionError(f"sandbox: {event}{tuple(args[:2])!r} outside the working directory")
source = open("program.py", encoding="utf-8").read()
code_obj = compile(source, "program.py", "exec")
sys.addaudithook(hook)
sys.stderr.write(f"sandbox: network {'namespace' if isolated_net else 'hook only'}\n")
try:
    exec(code_obj, {"__name__": "__main__", "__builtins__": __builtins__})
except AssertionError as e:
    sys.stderr.write(f"AssertionError: {e}\n")
    sys.stderr.flush()
    os._exit(3)
except BaseException as e:
    sys.stderr.write(f"{type(e).__name__}: {e}\n")
    sys.stderr.flush()
    os._exit(4)
sys.stdout.write("\n" + nonce + "\n")
sys.stdout.flush()
os._exit(0)
"""


def run_program(program: str, limits: Limits = Limits()) -> Result:
    """Runs one Python program under the limits; its own working directory is created and removed here."""
    import time

    nonce = secrets.token_hex(16)
    with tempfile.TemporaryDirectory(prefix="gptx_sandbox_") as home:
        with open(os.path.join(home, "program.py"), "w", encoding="utf-8") as f:
            f.write(program)
        args = [
            sys.executable, "-I", "-c", _BOOTSTRAP, str(limits.cpu_s), str(limits.memory_mb << 20),
            str(limits.file_mb << 20), "1" if limits.network_namespace else "0",
        ]  # fmt: skip
        env = {"PATH": "/usr/bin:/bin", "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1", "HOME": home}
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            args, cwd=home, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True,
        )  # fmt: skip
        timed_out = False
        try:
            out, err = proc.communicate((nonce + "\n").encode(), timeout=limits.timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc.pid)
            out, err = proc.communicate()
        finally:
            _kill_group(proc.pid)  # whatever the program left running in its group dies with it
        seconds = time.perf_counter() - t0
    return _classify(proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"), nonce, timed_out,
                     seconds)  # fmt: skip


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _classify(code: int, out: str, err: str, nonce: str, timed_out: bool, seconds: float) -> Result:
    lines = [line for line in err.strip().splitlines() if not line.startswith("sandbox: network")]
    last = lines[-1][:500] if lines else ""
    if timed_out:
        return Result(TIMEOUT, "wall clock limit", seconds)
    if code == -signal.SIGXCPU:  # the soft CPU limit's signal terminates the program
        return Result(TIMEOUT, "CPU limit", seconds)
    if code == 0 and out.rstrip().endswith(nonce):
        return Result(PASSED, "", seconds)
    if code == 3:
        return Result(FAILED, last, seconds)
    if code == 0:
        return Result(ERROR, "exited before its tests finished", seconds)
    if code < 0:
        return Result(ERROR, f"killed by signal {-code}", seconds)
    return Result(ERROR, last or f"exit code {code}", seconds)


def run_programs(programs: Sequence[str], limits: Limits = Limits(), workers: int = 0) -> list[Result]:
    """Results of many programs, `workers` at a time (0: one per CPU core); in the programs' order."""
    workers = workers or os.cpu_count() or 1
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda p: run_program(p, limits), programs))


def isolates_network(limits: Limits = Limits()) -> bool:
    """Whether this machine gives the sandbox its own network namespace (else only the socket hook holds)."""
    with tempfile.TemporaryDirectory() as home:
        with open(os.path.join(home, "program.py"), "w") as f:
            f.write("")
        proc = subprocess.run(
            [sys.executable, "-I", "-c", _BOOTSTRAP, str(limits.cpu_s), str(limits.memory_mb << 20), "0", "1"],
            cwd=home, input=b"x\n", capture_output=True, timeout=limits.timeout_s,
        )  # fmt: skip
    return b"network namespace" in proc.stderr
