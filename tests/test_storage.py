"""What a writer killed mid-write leaves behind is swept: its hidden temp file, once old and its
process gone, never a live writer's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from ray_pipeline.storage import STALE_TEMP_S, matching_files, sweep_temp_files, write_bytes


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_killed_writers_temp_file_is_swept_and_a_live_writers_is_kept(tmp_path):
    # a real writer killed between writing its temp file and renaming it
    script = ("import os, signal, sys\nsys.path.insert(0, sys.argv[2])\nimport ray_pipeline.storage as s\n"
              "os.replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL)\n"
              "s.write_bytes(sys.argv[1], b'half')\n")  # fmt: skip
    killed = subprocess.run([sys.executable, "-c", script, str(tmp_path / "state.json"),
                             os.path.dirname(os.path.dirname(os.path.abspath(__file__)))], check=False)  # fmt: skip
    assert killed.returncode == -signal.SIGKILL
    (left,) = [p for p in tmp_path.iterdir() if p.name.startswith(".state.json.tmp-")]
    assert not matching_files(tmp_path)  # readers never saw it

    old = time.time() - STALE_TEMP_S - 60
    live = tmp_path / f".other.json.tmp-{os.getpid()}-0123abcd"  # this process: alive
    recent = tmp_path / f".recent.json.tmp-{_dead_pid()}-89abcdef"  # gone, but written just now
    stale = tmp_path / f".stale.json.tmp-{_dead_pid()}-deadbeef"
    unrelated = tmp_path / ".keep.tmp-notapid"
    for p in (live, recent, stale, unrelated):
        p.write_bytes(b"x")
    for p in (left, live, stale, unrelated):
        os.utime(p, (old, old))

    assert sorted(sweep_temp_files(str(tmp_path))) == sorted([str(left), str(stale)])
    assert live.exists() and recent.exists() and unrelated.exists()


def test_the_first_write_into_a_folder_sweeps_it(tmp_path):
    stale = tmp_path / "sub" / f".a.json.tmp-{_dead_pid()}-00112233"
    stale.parent.mkdir()
    stale.write_bytes(b"x")
    old = time.time() - STALE_TEMP_S - 1
    os.utime(stale, (old, old))
    write_bytes(tmp_path / "sub" / "b.json", b"{}")
    assert not stale.exists() and (tmp_path / "sub" / "b.json").read_bytes() == b"{}"
