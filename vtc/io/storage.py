"""Storage: local paths as always, and object storage (`s3://`, `gs://`, `az://`, `hf://`, `https://`) through fsspec.

`location(x)` turns what a user typed into a `pathlib.Path` (local, unchanged behaviour) or a `RemotePath` (a URL):
the small subset of pathlib that the run layer uses (`/`, name, suffix, parent, exists, glob, read/write), so
batch planning, resume and the manifest read the same on both.

- **Reads stream.** `open_video(url)` gives PyAV a file object with read-ahead (`READ_AHEAD` bytes per request)
  that seeks with ranged GETs: a video is never downloaded whole, unless the server cannot serve byte ranges
  (some plain HTTP servers), in which case it is copied to a temporary file first (a container such as MP4 must
  seek). A read that fails (a dropped connection) is retried at the same offset with back-off for up to
  `VTC_READ_RETRY_SECONDS` (default 30 s), then the video fails with one line; PyAV otherwise takes a failed read
  for the end of the file, so the error is remembered and raised when the container closes.
- **Writes are atomic.** An output is written to a local temporary file and then uploaded in one PUT (or one
  multipart upload, completed at the end): an object store shows the finished object or none. Filesystems that
  are not object stores get an upload beside the target and a rename.
- **Credentials and endpoints** come from the usual environment (`AWS_ENDPOINT_URL`, `AWS_PROFILE`,
  `AWS_ACCESS_KEY_ID`, `GOOGLE_APPLICATION_CREDENTIALS`, ...) through the fsspec backend, plus options given with
  `set_options` (`vtc compress --storage-option k=v`), passed to every filesystem this process opens.
- Errors (no bucket, access denied, a network failure) become one-line `InputError`s (reads) or `OutputError`s
  (writes) naming the URL.
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from types import SimpleNamespace
from typing import Any

from vtc.errors import InputError, MissingDependencyError, OutputError, UsageError, VtcError

#: bytes fetched per ranged read of a video (PyAV asks for 32 KiB at a time)
READ_AHEAD = 4 << 20
#: object stores: a PUT (or a completed multipart upload) is atomic, so no temporary object is needed
OBJECT_STORES = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oss", "r2"})
#: the packages each scheme needs (for the message when one is missing)
BACKENDS = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs",
            "abfss": "adlfs", "hf": "huggingface_hub", "http": "aiohttp", "https": "aiohttp"}
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")

_options: dict[str, Any] = {}


def set_options(options: dict[str, Any]) -> None:
    """Options for every filesystem this process opens from now on (`--storage-option k=v`)."""
    _options.clear()
    _options.update(options)


def options() -> dict[str, Any]:
    """The options set with `set_options` (what a Ray worker is handed)."""
    return dict(_options)


def parse_option(text: str) -> tuple[str, Any]:
    """'key=value' → (key, value); the value is read as JSON when it is JSON (true, 3, {"a": 1}), else a string."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise UsageError(f"--storage-option must look like key=value (e.g. endpoint_url=http://host:9000), not "
                         f"'{text}'.")
    try:
        parsed: Any = json.loads(value)
    except ValueError:
        parsed = value
    return key.strip(), parsed


def is_url(x: object) -> bool:
    """Whether `x` names object storage (a URL other than file://) rather than a local path."""
    if isinstance(x, RemotePath):
        return True
    return isinstance(x, str) and bool(_URL.match(x)) and not x.startswith("file://")


def location(x: str | os.PathLike[str] | RemotePath) -> Path | RemotePath:
    """A local `Path` (file:// stripped) or a `RemotePath` for a URL."""
    if isinstance(x, (Path, RemotePath)):
        return x
    s = os.fspath(x)
    if is_url(s):
        return RemotePath(s)
    return Path(s[len("file://"):] if s.startswith("file://") else s)


def one_line(e: BaseException) -> str:
    """An exception's message on one line."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text[:300]


def describe(url: str, e: BaseException) -> str:
    """What went wrong with `url`, in words a user can act on."""
    if isinstance(e, FileNotFoundError):
        return f"{url}: no such object or bucket."
    if isinstance(e, PermissionError):
        return f"{url}: access denied ({one_line(e)}); check the credentials (AWS_PROFILE, AWS_ACCESS_KEY_ID, ...) " \
               f"or --storage-option."
    return f"{url}: storage error ({type(e).__name__}: {one_line(e)})."


def _filesystem(url: str) -> tuple[Any, str]:
    try:
        from fsspec.core import url_to_fs
    except ImportError:  # pragma: no cover - fsspec comes with torch
        raise MissingDependencyError("object storage needs fsspec: pip install 'vtc[s3]'.") from None
    scheme = url.split("://", 1)[0].lower()
    opts = dict(_options)
    if scheme in ("s3", "s3a"):
        opts.setdefault("use_listings_cache", False)  # other processes write here too (resume, Ray nodes)
        # the endpoint as an explicit option: fsspec caches filesystems by their options, so a process whose
        # AWS_ENDPOINT_URL changes gets a filesystem for the new endpoint
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint and "endpoint_url" not in opts and "endpoint_url" not in opts.get("client_kwargs", {}):
            opts["endpoint_url"] = endpoint
    try:
        return url_to_fs(url, **opts)
    except ImportError as e:
        pkg = BACKENDS.get(scheme, "the fsspec backend for it")
        extra = " (pip install 'vtc[s3]')" if pkg == "s3fs" else ""
        raise MissingDependencyError(f"{url}: {scheme}:// needs {pkg}{extra}: {one_line(e)}") from None
    except ValueError as e:
        raise UsageError(f"{url}: {one_line(e)}") from None


class RemotePath:
    """A URL with the pathlib subset the run layer uses.  Comparisons and hashing go by the URL."""

    def __init__(self, url: str) -> None:
        scheme, _, rest = url.partition("://")
        rest = rest.rstrip("/")
        self.url = f"{scheme}://{rest}"
        self.scheme = scheme.lower()

    # -------------------------------------------------------------- pure path operations
    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return f"RemotePath({self.url!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RemotePath) and other.url == self.url

    def __lt__(self, other: RemotePath) -> bool:
        return self.url < other.url

    def __hash__(self) -> int:
        return hash(self.url)

    def __truediv__(self, other: str | os.PathLike[str]) -> RemotePath:
        rel = PurePosixPath(os.fspath(other)).as_posix().lstrip("/")
        return RemotePath(f"{self.scheme}://{self._key}/{rel}")

    @property
    def _key(self) -> str:
        """The path after the scheme; an http(s) URL's query and fragment (a presigned URL's signature) are not
        part of its name."""
        rest = self.url.split("://", 1)[1]
        if self.scheme in ("http", "https"):
            rest = rest.split("#", 1)[0].split("?", 1)[0]
        return rest

    @property
    def name(self) -> str:
        return posixpath.basename(self._key)

    @property
    def suffix(self) -> str:
        return PurePosixPath(self.name).suffix

    @property
    def stem(self) -> str:
        return PurePosixPath(self.name).stem

    def with_suffix(self, suffix: str) -> RemotePath:
        return self.parent / PurePosixPath(self.name).with_suffix(suffix).name

    def with_name(self, name: str) -> RemotePath:
        return self.parent / name

    @property
    def parent(self) -> RemotePath:
        head = posixpath.dirname(self._key)
        return RemotePath(f"{self.scheme}://{head}") if head else self

    @property
    def parents(self) -> list[RemotePath]:
        out, p = [], self.parent
        while p != (out[-1] if out else self):
            out.append(p)
            p = p.parent
        return out

    def relative_to(self, other: RemotePath) -> PurePosixPath:
        if not (self.url + "/").startswith(other.url + "/"):
            raise ValueError(f"{self} is not under {other}")
        return PurePosixPath(self.url[len(other.url) + 1:])

    def resolve(self) -> RemotePath:
        return self

    def absolute(self) -> RemotePath:
        return self

    # -------------------------------------------------------------- storage operations
    def fs(self) -> tuple[Any, str]:
        """(fsspec filesystem, path within it)."""
        return _filesystem(self.url)

    def _call(self, op: Callable[[Any, str], Any], error: type[VtcError] = InputError) -> Any:
        fs, path = self.fs()
        try:
            return op(fs, path)
        except VtcError:
            raise
        except Exception as e:  # fsspec backends raise OSError subclasses and their own client errors
            raise error(describe(self.url, e)) from None

    def exists(self) -> bool:
        return bool(self._call(lambda fs, p: fs.exists(p)))

    def is_file(self) -> bool:
        return bool(self._call(lambda fs, p: fs.isfile(p)))

    def is_dir(self) -> bool:
        return bool(self._call(lambda fs, p: fs.isdir(p)))

    def info(self) -> dict[str, Any]:
        return dict(self._call(lambda fs, p: fs.info(p)))

    def stat(self) -> SimpleNamespace:
        return SimpleNamespace(st_size=int(self.info().get("size") or 0))

    def glob(self, pattern: str) -> Iterator[RemotePath]:
        """Objects matching `pattern` under this prefix."""
        fs, path = self.fs()
        try:
            found = fs.glob(f"{path}/{pattern}")
        except FileNotFoundError:
            return iter(())
        except Exception as e:
            raise InputError(describe(self.url, e)) from None
        return iter(sorted(RemotePath(_unstrip(self.scheme, fs, p)) for p in found))

    def find(self) -> list[RemotePath]:
        """Every object under this prefix (recursive)."""
        fs, path = self.fs()
        try:
            found = fs.find(path)
        except FileNotFoundError:
            return []
        except Exception as e:
            raise InputError(describe(self.url, e)) from None
        return sorted(RemotePath(_unstrip(self.scheme, fs, p)) for p in found)

    def read_bytes(self) -> bytes:
        return bytes(self._call(lambda fs, p: fs.cat_file(p)))

    def read_range(self, start: int, end: int) -> bytes:
        return bytes(self._call(lambda fs, p: fs.cat_file(p, start=start, end=end)))

    def read_text(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return self.read_bytes().decode(encoding, errors)

    def write_bytes(self, data: bytes) -> None:
        """One PUT: the object appears whole or not at all."""
        self._call(lambda fs, p: fs.pipe_file(p, data), OutputError)

    def write_text(self, text: str, encoding: str = "utf-8") -> None:
        self.write_bytes(text.encode(encoding))

    def unlink(self, missing_ok: bool = False) -> None:
        fs, path = self.fs()
        try:
            fs.rm_file(path)
        except FileNotFoundError:
            if not missing_ok:
                raise InputError(f"{self.url}: no such object.") from None
        except Exception as e:
            raise OutputError(describe(self.url, e)) from None

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        """Object stores have no folders: nothing to make (a missing bucket shows at the first write)."""
        if self.scheme not in OBJECT_STORES:
            self._call(lambda fs, p: fs.makedirs(p, exist_ok=True), OutputError)

    def upload(self, local: str | os.PathLike[str]) -> None:
        """Copy a finished local file here atomically (see the module docstring)."""
        fs, path = self.fs()
        try:
            if self.scheme in OBJECT_STORES:
                fs.put_file(os.fspath(local), path)
            else:
                tmp = f"{posixpath.dirname(path)}/.{posixpath.basename(path)}.{uuid.uuid4().hex[:8]}.tmp"
                fs.put_file(os.fspath(local), tmp)
                fs.mv(tmp, path)
        except Exception as e:
            raise OutputError(describe(self.url, e)) from None


def _unstrip(scheme: str, fs: Any, path: str) -> str:
    """fsspec lists paths without their protocol: the URL again."""
    return path if "://" in path else f"{scheme}://{path}"


def atomic_upload(target: RemotePath, write_to: Callable[[str], Any],
                  check: Callable[[str], None] | None = None) -> RemotePath:
    """Call `write_to(local temporary path)`, run `check(that path)` (a file its reader would refuse is never
    uploaded), then upload that file to `target` in one atomic step."""
    fd, tmp = tempfile.mkstemp(prefix=".vtc-upload.", suffix=f".{target.name}"[-80:])
    os.close(fd)
    try:
        write_to(tmp)
        if check is not None:
            check(tmp)
        target.upload(tmp)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return target


@contextmanager
def local_copy(target: RemotePath) -> Iterator[Path]:
    """The object fetched into a temporary file of the same name (removed afterwards), for readers that need a
    local file (safetensors' memory map)."""
    d = tempfile.mkdtemp(prefix="vtc-fetch-")
    try:
        local = Path(d) / (target.name or "object")
        fs, path = target.fs()
        try:
            fs.get_file(path, str(local))
        except FileNotFoundError:
            raise InputError(f"{target}: no such object.") from None
        except Exception as e:
            raise InputError(describe(target.url, e)) from None
        yield local
    finally:
        shutil.rmtree(d, ignore_errors=True)


def read_via_copy(path: str | os.PathLike[str], read: Callable[[Path], Any]) -> Any:
    """`read(local path)` on a temporary local copy of the object at URL `path`; the result's `path` names the
    object (token files are read whole: safetensors and the header checks want a local file)."""
    remote = location(path)
    assert isinstance(remote, RemotePath)
    with local_copy(remote) as local:
        found = read(local)
    found.path = remote
    return found


def etag(target: RemotePath) -> str | None:
    """The object's ETag (or another version tag the backend gives), None when it has none."""
    info = target.info()
    for k in ("ETag", "etag", "md5", "version_id", "VersionId"):
        if info.get(k):
            return str(info[k]).strip('"')
    return None


def retry_seconds() -> float:
    try:
        return max(0.0, float(os.environ.get("VTC_READ_RETRY_SECONDS", "30")))
    except ValueError:
        return 30.0


class RemoteVideo(io.RawIOBase):
    """A seekable, read-ahead file object over an object for PyAV.

    A failed read is retried at the same offset (the object reopened) with back-off for `retry_seconds()`; if it
    still fails, the error is kept in `error` and every later read fails too, so the decoder stops, and the
    caller raises `error` (PyAV alone would end the stream quietly, as if the file ended there).
    """

    def __init__(self, target: RemotePath) -> None:
        super().__init__()
        self.target = target
        self.fs, self.path = target.fs()
        self.pos = 0
        self.error: InputError | None = None
        try:
            self.size = int(self.fs.size(self.path))
            self._f = self._open()
        except VtcError:
            raise
        except Exception as e:
            raise InputError(describe(target.url, e)) from None

    def _open(self) -> Any:
        return self.fs.open(self.path, "rb", block_size=READ_AHEAD, cache_type="readahead")

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence == 0:
            self.pos = offset
        elif whence == 1:
            self.pos += offset
        elif whence == 2:
            self.pos = self.size + offset
        elif whence == 0x10000:  # AVSEEK_SIZE
            return self.size
        self.pos = max(0, self.pos)
        return self.pos

    def read(self, n: int = -1) -> bytes:
        if self.error is not None:
            raise self.error
        if n is None or n < 0:
            n = self.size - self.pos
        deadline = time.monotonic() + retry_seconds()
        delay = 0.25
        while True:
            try:
                self._f.seek(self.pos)
                data = self._f.read(n)
                self.pos += len(data)
                return data
            except Exception as e:  # a dropped connection, a server restart, a throttle
                if time.monotonic() + delay > deadline:
                    self.error = InputError(f"{self.target}: reading failed at byte {self.pos} of {self.size} "
                                            f"({type(e).__name__}: {one_line(e)}); nothing was written for it, "
                                            f"a rerun resumes")
                    raise self.error from None
                time.sleep(delay)
                delay = min(delay * 2, 4.0)
                try:
                    self._f = self._open()
                except Exception:  # still down: the next attempt reopens again
                    pass

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def close(self) -> None:
        try:
            self._f.close()
        except Exception:
            pass
        super().close()
