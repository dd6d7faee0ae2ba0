"""Atomic writes that name the file on a full disk, and the clean-up of what a killed writer left behind."""

import errno
import os
import resource
import signal
import subprocess
import sys

import pytest

from moe_lm.data.files import naming, remove_stale_temporaries, write_text_atomic


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temporaries_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    dead, me = dead_pid(), os.getpid()
    (tmp_path / f"last.ckpt.{dead}.tmp").write_bytes(b"half")
    (tmp_path / f"result.json.{me}.tmp").write_text("{")  # this process: a write in progress
    (tmp_path / f".export.{dead}.x1y2.tmp").mkdir()
    (tmp_path / f".export.{dead}.x1y2.tmp" / "model.safetensors").write_bytes(b"\0")
    (tmp_path / "notes.tmp").write_text("no pid: not ours to judge")
    (tmp_path / "last.ckpt").write_bytes(b"kept")
    removed = remove_stale_temporaries(tmp_path)
    assert sorted(removed) == sorted([f"last.ckpt.{dead}.tmp", f".export.{dead}.x1y2.tmp"])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["last.ckpt", "notes.tmp", f"result.json.{me}.tmp"])
    assert remove_stale_temporaries(tmp_path / "missing") == []


def test_a_write_error_names_the_file(tmp_path):
    with pytest.raises(OSError, match=r"File too large \(while writing it\)") as e:
        with naming(tmp_path / "train.bin.partial"):
            raise OSError(errno.EFBIG, "File too large")
    assert e.value.filename == str(tmp_path / "train.bin.partial")
    with pytest.raises(FileNotFoundError) as e:  # an error that names its file already is left as it is
        with naming(tmp_path / "other"):
            open(tmp_path / "missing" / "x")
    assert e.value.filename.endswith("missing/x")


def test_a_full_disk_during_an_atomic_write_names_the_file_and_leaves_nothing(tmp_path):
    """RLIMIT_FSIZE makes the write fail as a full disk would (EFBIG), in a child process."""
    code = (f"from pathlib import Path; from moe_lm.data.files import write_text_atomic\n"
            f"write_text_atomic(Path({str(tmp_path / 'big.json')!r}), 'x' * 100_000)\n")

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (10_000, 10_000))

    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, preexec_fn=limit)
    assert proc.returncode == 1
    assert f"OSError: [Errno {errno.EFBIG}] File too large (while writing it): '{tmp_path / 'big.json'}'" in proc.stderr
    assert list(tmp_path.iterdir()) == []
    write_text_atomic(tmp_path / "ok.json", "{}")
    assert [p.name for p in tmp_path.iterdir()] == ["ok.json"]


def test_link_or_copy_shares_the_bytes_and_survives_a_rewrite_of_either_name(tmp_path):
    from moe_lm.data.files import link_or_copy

    (tmp_path / "last.ckpt").write_bytes(b"step 800")
    link_or_copy(tmp_path / "last.ckpt", tmp_path / "final.ckpt")
    assert (tmp_path / "final.ckpt").stat().st_ino == (tmp_path / "last.ckpt").stat().st_ino
    write_text_atomic(tmp_path / "last.ckpt", "step 900")  # a resumed run saves last.ckpt again
    assert (tmp_path / "final.ckpt").read_bytes() == b"step 800"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final.ckpt", "last.ckpt"]
