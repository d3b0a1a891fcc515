"""Nothing of an embedded Ray outlives its starter: the reaper ends every process carrying the
instance's mark once the starter is gone, SIGKILLed included, and nothing else."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from ray_pipeline import reaper

from .helpers import wait_until

STARTER = """
import os, subprocess, sys, time
from ray_pipeline import reaper
os.environ[reaper.MARK] = sys.argv[1]
kept = reaper.start(sys.argv[1])
# a process of the instance that ignores SIGTERM, as a wedged agent would: only SIGKILL ends it
child = subprocess.Popen([sys.executable, "-c",
                          "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
print(child.pid, kept.pid, flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False


def test_a_killed_starters_instance_is_reaped_and_nothing_else(tmp_path):
    mark = str(tmp_path / "instance")
    other_env = {**os.environ, reaper.MARK: str(tmp_path / "another")}
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], env=other_env)
    starter = subprocess.Popen([sys.executable, "-c", STARTER, mark], stdout=subprocess.PIPE, text=True)
    try:
        child, kept = (int(x) for x in starter.stdout.readline().split())
        # the starter's children carry the mark (not the reaper; nor the starter, which set it after it began)
        assert reaper.marked(mark) == [child]
        time.sleep(reaper.GRACE_S + 1)
        assert _alive(child) and _alive(kept)  # a live starter keeps its instance
        starter.send_signal(signal.SIGKILL)
        starter.wait()
        assert wait_until(lambda: not _alive(child), reaper.GRACE_S + reaper.TERM_S + 10, every=0.2)
        assert wait_until(lambda: not _alive(kept), 10, every=0.2)  # its work done, the reaper is gone too
        assert _alive(bystander.pid)  # another instance's process is not its business
    finally:
        for p in (starter, bystander):
            p.kill()
