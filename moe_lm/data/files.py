"""Safe file operations: atomic writes (a temporary file beside the target, then a rename, so a crash never leaves
half a file) and a directory lock (so two processes never write one output directory)."""

from __future__ import annotations

import json
import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from moe_lm.config import ConfigError


@contextmanager
def naming(path: Path) -> Iterator[None]:
    """An OSError of a write (a full disk, a file-size limit) re-raised with the file it was writing, which the OS
    leaves out: `[Errno 27] File too large` becomes `<path>: File too large`."""
    try:
        yield
    except OSError as e:
        if e.filename or not e.strerror:
            raise
        raise OSError(e.errno, f"{e.strerror} (while writing it)", str(path)) from e
    except Exception as e:  # a library's own error around an OS one (safetensors: "I/O error: ... (os error 27)")
        m = re.search(r"I/O error: (.*) \(os error (\d+)\)", str(e))
        if m is None:
            raise
        raise OSError(int(m[2]), f"{m[1]} (while writing it)", str(path)) from e


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # per process: two writers never share one
    try:
        with naming(path), open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)  # nothing half-written is left behind
        raise
    os.replace(tmp, path)


def link_or_copy(src: Path, dst: Path) -> None:
    """`dst` holding `src`'s bytes, atomically: a hard link where the filesystem has them (no second copy on disk;
    an atomic rewrite of either name later leaves the other intact), else a copy."""
    tmp = dst.with_name(f"{dst.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:  # no hard links here (some network and FUSE filesystems)
        with naming(dst):
            shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temporaries(directory: Path) -> list[str]:
    """Delete the temporary files and directories (`<name>.<pid>.tmp`, `.<name>.<pid>.<random>.tmp`) that a killed
    writer left in `directory`: those whose process is gone. Returns their names."""
    removed = []
    for path in sorted(Path(directory).glob("*.tmp")) if Path(directory).is_dir() else []:
        pids = [int(part) for part in path.name.split(".")[:-1] if part.isdigit()]
        if not pids or pids[-1] == os.getpid() or pid_alive(pids[-1]):
            continue
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        removed.append(path.name)
    return removed


def write_json_atomic(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2))


class DirectoryLock:
    """An exclusive lock on `<directory>/.lock`, held while the context is open.

    The OS releases it when the process ends, however it ends (SIGKILL included), so a stale lock never blocks a
    rerun. A second process gets a ConfigError naming `key`, the directory and the holder's pid.
    """

    def __init__(self, directory: Path, key: str, what: str) -> None:
        self.path, self.key, self.what = Path(directory) / ".lock", key, what
        self._fd: int | None = None

    def __enter__(self) -> "DirectoryLock":
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise ConfigError(f"{self.key}: {self.path.parent} is in use by another {self.what} (pid {holder}); "
                              f"wait for it to finish or choose another directory") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        import fcntl

        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
