"""The one path layer: every file gptx reads or writes, on local disk or behind a URL (gs://, s3://, ...).

Local paths go through `os` exactly as before; URLs go through `etils.epath` (whose gs:// backend is gcsfs when
TensorFlow is absent), the same filesystem instances orbax uses, so what one writes the other lists. gcsfs and
google-cloud-storage are an extra (`pip install gptx[gcs]`), imported only when a URL is used.

What object stores cannot do, and what this module does instead:
  - no directories: `makedirs` is a no-op, `isdir` means "some object has this prefix";
  - no append and no rename: `write_atomic` writes the final object directly (an upload is all-or-nothing),
    `append_text` rewrites a small object whole, and a library that writes only local files (ArrayRecord,
    safetensors) writes to `local_output`'s temporary file, uploaded whole when it is complete;
  - no recursive `**` glob: `glob` refuses it on a URL rather than listing the whole bucket.

A remote path that cannot work fails at its first use in a few seconds, in one line naming the path: gcsfs would
otherwise retry an unreachable endpoint for a minute, and tensorstore would hang without credentials.
"""

from __future__ import annotations

import contextlib
import functools
import glob as glob_lib
import os
import posixpath
import re
import shutil
import socket
import tempfile
import urllib.parse
from collections.abc import Iterator
from typing import Any

from gptx.errors import DataError

PathLike = str | os.PathLike
SCHEMES = ("gs", "s3", "az")  # the object stores epath's fsspec backend serves (gs:// is the tested one)
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
PROBE_TIMEOUT_S = 5.0  # a reachable endpoint answers a TCP connect in milliseconds
REQUEST_TIMEOUT_S = 60.0  # one gcsfs HTTP request; large uploads are chunked below this
UPLOAD_IN_ONE_REQUEST = 64 << 20  # bytes: a smaller local file is uploaded whole from memory, a larger one in chunks
_checked: set[str] = set()  # endpoints that answered (once per process)


class StorageError(DataError):
    """A remote path that cannot be used (endpoint unreachable, no credentials, access denied); names the path."""


# ------------------------------------------------------------------------------------------------------------
# Names


def is_remote(path: PathLike) -> bool:
    """Whether `path` is a URL (gs://bucket/..., s3://...), not a local path."""
    return bool(_SCHEME.match(os.fspath(path)))


def scheme(path: PathLike) -> str:
    """ "gs" of gs://..., "" for a local path."""
    m = _SCHEME.match(os.fspath(path))
    return m.group(1) if m else ""


def join(base: PathLike, *parts: str) -> str:
    """`base`/`parts` ("/" on a URL whatever the OS)."""
    base = os.fspath(base)
    if is_remote(base):
        return posixpath.join(base.rstrip("/") + "/", *parts) if parts else base
    return os.path.join(base, *parts)


def absolute(path: PathLike) -> str:
    """An absolute local path; a URL as it is (os.path.abspath would turn gs://b into ./gs:/b)."""
    path = os.fspath(path)
    return path.rstrip("/") if is_remote(path) else os.path.abspath(path)


def dirname(path: PathLike) -> str:
    path = os.fspath(path)
    if is_remote(path):
        head = posixpath.dirname(path.rstrip("/"))
        return head if len(head) > len(scheme(path)) + 3 else path  # gs://bucket has no parent
    return os.path.dirname(path)


def basename(path: PathLike) -> str:
    path = os.fspath(path)
    return posixpath.basename(path.rstrip("/")) if is_remote(path) else os.path.basename(path)


# ------------------------------------------------------------------------------------------------------------
# Queries


def exists(path: PathLike) -> bool:
    if not is_remote(path):
        return os.path.exists(path)
    with _errors(path):
        return _fs(path).exists(_key(path))


def isdir(path: PathLike) -> bool:
    """A local directory, or a URL prefix that some object lies under."""
    if not is_remote(path):
        return os.path.isdir(path)
    with _errors(path):
        return _fs(path).isdir(_key(path))


def isfile(path: PathLike) -> bool:
    if not is_remote(path):
        return os.path.isfile(path)
    with _errors(path):
        return _fs(path).isfile(_key(path))


def stamp(path: PathLike) -> tuple[int, int]:
    """(size in bytes, version) of a file: the version changes when the file is rewritten (its mtime in whole
    seconds on disk, its generation for an object), so the pair tells whether an input changed since a run."""
    if not is_remote(path):
        st = os.stat(path)
        return st.st_size, int(st.st_mtime)
    with _errors(path):
        info = _fs(path).info(_key(path))
        generation = str(info.get("generation") or "")
        version = int(generation) if generation.isdigit() else int(_fs(path).modified(_key(path)).timestamp())
    return int(info.get("size") or 0), version


def listdir(path: PathLike) -> list[str]:
    """Names (not paths) of the entries of a directory, sorted."""
    if not is_remote(path):
        return sorted(os.listdir(path))
    with _errors(path):
        entries = _fs(path).ls(_key(path), detail=False)
    return sorted({posixpath.basename(e.rstrip("/")) for e in entries} - {""})


def glob(pattern: PathLike) -> list[str]:
    """Sorted paths matching `pattern` (* ? [..] within one level). A recursive ** on a URL is a ValueError: an
    object store would list the whole bucket to answer it."""
    pattern = os.fspath(pattern)
    if not is_remote(pattern):
        return sorted(glob_lib.glob(pattern))
    if "**" in pattern:
        raise ValueError(f"{pattern}: recursive ** globs are not supported on {scheme(pattern)}:// paths")
    with _errors(pattern):
        found = _fs(pattern).glob(_key(pattern))
    return sorted(f"{scheme(pattern)}://{f}" for f in found)


def has_magic(pattern: PathLike) -> bool:
    return glob_lib.has_magic(os.fspath(pattern))


# ------------------------------------------------------------------------------------------------------------
# Reads and writes


def makedirs(path: PathLike) -> None:
    """Creates a local directory and its parents; a no-op on a URL (object stores have no directories)."""
    if not is_remote(path):
        os.makedirs(path, exist_ok=True)


def read_bytes(path: PathLike) -> bytes:
    if not is_remote(path):
        with open(path, "rb") as f:
            return f.read()
    with _errors(path):
        return _fs(path).cat_file(_key(path))


def read_text(path: PathLike, encoding: str = "utf-8") -> str:
    return read_bytes(path).decode(encoding)


def write_atomic(path: PathLike, data: bytes | str) -> None:
    """Writes the whole of `data` so that a reader never sees half of it and an interrupted write keeps the
    previous contents: a temporary file and a rename on disk; on a URL the object itself, since an object upload
    is all-or-nothing (and stores have no atomic rename)."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    path = os.fspath(path)
    if is_remote(path):
        with _errors(path):
            _fs(path).pipe_file(_key(path), raw)
        return
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(raw)
    os.replace(tmp, path)


def append_text(path: PathLike, text: str) -> None:
    """Adds `text` at the end of a text file, creating it. On disk an append; an object cannot be appended to
    (gcsfs's append mode silently overwrites), so on a URL the object is read and rewritten whole: meant for
    small files that one process writes (a sweep's results), not for logs (see train.logs.MetricWriter)."""
    if not is_remote(path):
        with open(path, "a", encoding="utf-8") as f:
            f.write(text)
        return
    write_atomic(path, (read_text(path) if exists(path) else "") + text)


def open_file(path: PathLike, mode: str = "rb", **kwargs: Any):
    """A file object of `path` (a URL's is gcsfs's: a write is uploaded when it is closed)."""
    if not is_remote(path):
        return open(path, mode, **kwargs)
    with _errors(path):
        return _epath(path).open(mode, **kwargs)


def remove(path: PathLike) -> None:
    """Deletes one file (or object)."""
    if not is_remote(path):
        os.remove(path)
        return
    with _errors(path):
        _fs(path).rm_file(_key(path))


def copy(src: PathLike, dst: PathLike) -> None:
    """Copies one file, local or remote, to a local or remote destination (overwriting it); an object is
    downloaded, and a local file over UPLOAD_IN_ONE_REQUEST bytes uploaded, in chunks rather than read whole."""
    if not is_remote(src) and not is_remote(dst):
        shutil.copyfile(src, dst)
    elif not is_remote(src):
        _upload(os.fspath(src), os.fspath(dst))
    elif not is_remote(dst):
        with _errors(src):
            _fs(src).get_file(_key(src), os.fspath(dst))
    else:
        write_atomic(dst, read_bytes(src))


def move(src: PathLike, dst: PathLike) -> None:
    """Moves a file or directory tree. On a URL this is a copy of every object and a delete: not atomic, so it
    is only used for setting things aside (damaged checkpoints), never for publishing them."""
    if not is_remote(src):
        shutil.move(src, dst)
        return
    with _errors(src):  # copy + delete: gcsfs's server-side move is not in every GCS API (nor emulator)
        _fs(src).copy(_key(src), _key(dst), recursive=True)
        _fs(src).rm(_key(src), recursive=True)


@contextlib.contextmanager
def local_output(path: PathLike) -> Iterator[str]:
    """A local path to write `path`'s contents to, for libraries that only write local files (ArrayRecord, gzip,
    numpy). When the block ends without an error the file is published at `path` whole: renamed into place on
    disk, uploaded to a URL; on an error it is discarded and `path` keeps its previous contents."""
    path = os.fspath(path)
    if is_remote(path):
        with tempfile.TemporaryDirectory(prefix="gptx-") as tmp:
            local = os.path.join(tmp, basename(path))
            yield local
            _upload(local, path)
        return
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _upload(local: str, path: str) -> None:
    if os.path.getsize(local) <= UPLOAD_IN_ONE_REQUEST:
        with open(local, "rb") as f:
            write_atomic(path, f.read())
        return
    with _errors(path):
        _fs(path).put_file(local, _key(path))


@contextlib.contextmanager
def local_file(path: PathLike) -> Iterator[str]:
    """A local path holding `path`'s bytes for libraries that only open local files (a URL is downloaded into a
    temporary directory, removed afterwards)."""
    if not is_remote(path):
        yield os.fspath(path)
        return
    with tempfile.TemporaryDirectory(prefix="gptx-") as tmp:
        local = os.path.join(tmp, basename(path))
        with open(local, "wb") as f:
            f.write(read_bytes(path))
        yield local


@contextlib.contextmanager
def local_dir(path: PathLike) -> Iterator[str]:
    """A local directory holding the files directly in directory `path` (a URL's are downloaded one by one into
    a temporary directory, removed afterwards), for readers such as Hugging Face's that open local paths."""
    if not is_remote(path):
        yield os.fspath(path)
        return
    if not isdir(path):
        raise FileNotFoundError(f"{path} is not a directory (no objects under it)")
    with tempfile.TemporaryDirectory(prefix="gptx-") as tmp:
        for name in listdir(path):
            if isfile(join(path, name)):
                copy(join(path, name), os.path.join(tmp, name))
        yield tmp


# ------------------------------------------------------------------------------------------------------------
# The remote backend


def prepare(path: PathLike) -> None:
    """Readies the backend of a URL before another library opens it (orbax, through epath): gcsfs configured,
    the endpoint checked. A no-op for a local path; every function of this module does it itself."""
    if is_remote(path):
        _prepare(os.fspath(path))


def _epath(path: PathLike):
    _prepare(os.fspath(path))
    from etils import epath

    return epath.Path(os.fspath(path))


def _fs(path: PathLike):
    """The fsspec filesystem epath (and so orbax) uses for `path`'s scheme."""
    if scheme(path) not in SCHEMES:  # epath would read any other URL as a local path
        raise StorageError(
            f"{os.fspath(path)}: {scheme(path)}:// is not supported (use {', '.join(SCHEMES)}:// or a path)"
        )
    _prepare(os.fspath(path))
    from etils.epath import backend

    return backend.fsspec_backend.fs(os.fspath(path))


def _key(path: PathLike) -> str:
    return os.fspath(path).rstrip("/")


def _prepare(path: str) -> None:
    """Configures gcsfs before its first use, then checks the endpoint (both once per process)."""
    if scheme(path) != "gs":
        return
    try:
        _configure_gcsfs()
    except ImportError:
        raise StorageError(f"{path}: gs:// paths need gcsfs: pip install 'gptx[gcs]'") from None
    check_endpoint(path)


@functools.cache
def _configure_gcsfs() -> None:
    """Sets gcsfs's options before epath makes its filesystem (fsspec caches instances with their options)."""
    import fsspec

    # No listing cache: orbax (tensorstore) and other hosts write the same prefixes behind gcsfs's back, and a
    # stale listing would hide their steps.
    for name in ("gs", "gcs"):
        fsspec.config.conf.setdefault(name, {}).setdefault("cache_timeout", 0)
        fsspec.config.conf[name].setdefault("requests_timeout", REQUEST_TIMEOUT_S)
    import gcsfs

    # An emulator named by STORAGE_EMULATOR_HOST (gcsfs, google-cloud-storage) serves tensorstore (orbax's arrays)
    # and array_record's C++ reader too, unless they are pointed elsewhere: without it they would ask Google.
    if gcs_endpoint() != "https://storage.googleapis.com":
        for var in ("TENSORSTORE_GCS_HTTP_URL", "CLOUD_STORAGE_EMULATOR_ENDPOINT"):
            os.environ.setdefault(var, gcs_endpoint())

    # gcsfs's default (zonal/HNS-aware) filesystem asks for each bucket's type on every call through a second
    # client, which without credentials (an emulator) asks the GCE metadata server for seconds each time. Plain
    # GCSFileSystem serves standard buckets; GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=true keeps gcsfs's choice.
    if os.environ.get("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false").lower() not in ("true", "1"):
        for name in ("gs", "gcs"):
            fsspec.register_implementation(name, gcsfs.core.GCSFileSystem, clobber=True)


def gcs_endpoint() -> str:
    """The GCS endpoint clients talk to: STORAGE_EMULATOR_HOST when set (an emulator), else Google's."""
    host = os.environ.get("STORAGE_EMULATOR_HOST", "")
    if host and host != "default":
        return host if "://" in host else f"http://{host}"
    return "https://storage.googleapis.com"


def check_endpoint(path: PathLike) -> None:
    """StorageError within PROBE_TIMEOUT_S naming `path` when the GCS endpoint does not answer or no credentials
    are found; once per endpoint and process."""
    endpoint = gcs_endpoint()
    if endpoint in _checked:
        return
    url = urllib.parse.urlsplit(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=PROBE_TIMEOUT_S).close()
    except OSError as e:
        why = "timed out" if isinstance(e, TimeoutError) else (e.strerror or str(e))
        hint = "is the emulator running?" if "STORAGE_EMULATOR_HOST" in os.environ else "is the network up?"
        raise StorageError(f"{os.fspath(path)}: cannot reach the storage endpoint {endpoint} ({why}); {hint}") from None
    if endpoint.startswith("https://storage.googleapis.com"):
        _check_credentials(os.fspath(path))
    _checked.add(endpoint)


def _check_credentials(path: str) -> None:
    import google.auth
    from google.auth import exceptions

    try:
        google.auth.default()
    except exceptions.DefaultCredentialsError:
        raise StorageError(
            f"{path}: no Google Cloud credentials found (run `gcloud auth application-default login`, or set "
            "GOOGLE_APPLICATION_CREDENTIALS to a service account key)"
        ) from None


@contextlib.contextmanager
def _errors(path: PathLike) -> Iterator[None]:
    """Turns a storage library's error into one line naming `path`: FileNotFoundError (naming a missing bucket),
    PermissionError, or StorageError."""
    path = os.fspath(path)
    try:
        yield
    except (StorageError, ValueError):
        raise
    except FileNotFoundError:
        raise FileNotFoundError(_missing(path)) from None
    except PermissionError as e:
        raise PermissionError(f"{path}: access denied ({_first_line(e)})") from None
    except Exception as e:  # noqa: BLE001 - aiohttp, google.auth and gcsfs's HttpError share no base class
        code = getattr(e, "code", None)
        if code in (401, 403):
            raise PermissionError(f"{path}: access denied ({_first_line(e)}); check the credentials") from None
        raise StorageError(f"{path}: {type(e).__name__}: {_first_line(e)}") from None


def _missing(path: str) -> str:
    """Why `path` is not found: its bucket does not exist, or the object does not."""
    bucket = path[len(scheme(path)) + 3 :].split("/", 1)[0]
    try:
        if not _fs(path).exists(bucket):
            return f"{path} not found: bucket {scheme(path)}://{bucket} does not exist"
    except Exception:  # noqa: BLE001 - the original error is the one to report
        pass
    return f"{path} not found"


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0][:300] if lines else type(e).__name__
