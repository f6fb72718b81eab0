"""A kernel the pipeline starts dies with the pipeline, and takes its worker processes with it.

jupyter_client starts each kernel in a session of its own, and joblib's workers (03's parallel
search) join the kernel's process group. A runner that is stopped (Ctrl+C, SIGTERM) kills that group
itself. One killed outright (SIGKILL) cannot: its kernel would run on, orphaned, with its workers,
hundreds of MB each. So the runner starts its kernels running `watch_parent`, a thread that notices
when the kernel's parent is gone and kills the kernel's whole process group.
"""

from __future__ import annotations

import os
import signal
import threading
import time

POLL_SECONDS = 0.5


def watch_parent(interval: float = POLL_SECONDS) -> threading.Thread:
    """Kill this process, and its group when it leads one, once its parent process has exited."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:  # an orphan is adopted by another process
            time.sleep(interval)
        if os.getpgid(0) == os.getpid():  # a session of its own: its workers are in the group
            os.killpg(os.getpid(), signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)

    thread = threading.Thread(target=watch, name="die-with-the-pipeline", daemon=True)
    thread.start()
    return thread
