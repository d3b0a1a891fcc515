"""Nothing of an embedded Ray outlives the process that started it, however that process ends.

Ray stops its own head processes when the driver that started them dies, but not everything under
them: a SIGKILLed `run --serve` left Ray's dashboard and runtime-env agents running for minutes,
and a killed test run an HAProxy. Every process of an instance `runtime.init_ray` starts carries
its mark in the environment (`MARK`, inherited from the driver by Ray's processes, their workers
and what those start). This reaper, started beside the instance in its own session, waits until
its starter is gone (its pipe from the starter closes: exit, crash or SIGKILL alike), gives Ray
`GRACE_S` to stop by itself, then ends whatever still carries the mark: SIGTERM, and SIGKILL for
what is still there after `TERM_S`.

    python -m ray_pipeline.reaper MARK_VALUE     # stdin: a pipe the starter holds open
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

MARK = "RAY_PIPELINE_INSTANCE"
GRACE_S = 3.0  # Ray's own shutdown of a driver's instance takes about this long
TERM_S = 5.0


def marked(value: str) -> list[int]:
    """Processes whose environment carries `MARK=value` (this one excepted)."""
    needle = f"{MARK}={value}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    found.append(int(entry))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found


def reap(value: str, grace_s: float = GRACE_S, term_s: float = TERM_S) -> list[int]:
    """End every process marked `value` (SIGTERM, then SIGKILL); the pids that were still running."""
    time.sleep(grace_s)
    left = marked(value)
    for sig, wait in ((signal.SIGTERM, term_s), (signal.SIGKILL, 0.0)):
        for pid in left:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while wait and time.monotonic() < deadline and marked(value):
            time.sleep(0.2)
        if not marked(value):
            break
    return left


def start(value: str) -> subprocess.Popen:
    """A reaper for the instance marked `value`, watching this process (keep the returned handle:
    its pipe closing is what the reaper waits for)."""
    env = {k: v for k, v in os.environ.items() if k != MARK}  # never its own target
    return subprocess.Popen([sys.executable, "-m", "ray_pipeline.reaper", value], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                            start_new_session=True)  # fmt: skip


def main() -> None:
    """Wait for the starter's pipe to close, then reap its instance."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C aimed at the starter's terminal is not for us
    sys.stdin.buffer.read()  # returns at EOF: the starter is gone
    reap(sys.argv[1])


if __name__ == "__main__":
    main()
