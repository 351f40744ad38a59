"""A dummy SGLang child process (``sglang::scheduler_TP<i>`` / ``sglang::detokenizer``).

Started by the launcher with ``python -m sglang_backend.testing._child TITLE``.  First
thing it asks the kernel to SIGKILL it when its parent dies (``PR_SET_PDEATHSIG``), then
sets its process title and waits on stdin, a pipe from the launcher:

* EOF (the launcher closed the pipe or died) → exit 0;
* a ``crash`` line → log ``Scheduler hit an exception: …`` and send SIGQUIT to the
  launcher, as a crashing SGLang scheduler does.

It also exits when its parent pid changes (belt and braces for non-Linux systems).
"""

from __future__ import annotations

import ctypes
import os
import select
import signal
import sys
import time

_PR_SET_PDEATHSIG = 1


def set_pdeathsig() -> None:
    """Ask the Linux kernel to SIGKILL this process when its parent (thread) exits."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):
        return


def _log(title: str, message: str) -> None:
    """Write one SGLang-style log line to stderr."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    rank = title.rsplit("_", 1)[-1] if "_TP" in title else "DETOKENIZER"
    sys.stderr.write(f"[{stamp} {rank}] {message}\n")
    sys.stderr.flush()


def main(argv: list[str]) -> int:
    """Run the dummy child until its launcher goes away or orders a crash."""
    set_pdeathsig()
    parent = int(argv[2]) if len(argv) > 2 else os.getppid()
    if os.getppid() != parent:
        return 0
    title = argv[1] if len(argv) > 1 else "sglang::scheduler"
    try:
        import setproctitle

        setproctitle.setproctitle(title)
    except ImportError:
        pass
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    stdin = sys.stdin.buffer
    while True:
        if os.getppid() != parent:
            return 0
        readable, _, _ = select.select([stdin], [], [], 0.5)
        if not readable:
            continue
        line = stdin.readline()
        if not line:
            return 0
        if line.strip() == b"crash":
            _log(
                title,
                "Scheduler hit an exception: Traceback (most recent call last):\n"
                '  File "sglang/srt/managers/scheduler.py", line 2970, in run_scheduler_process\n'
                "    scheduler.event_loop_overlap()\n"
                "RuntimeError: stand-in crash requested (--standin-crash-after)",
            )
            os.kill(parent, signal.SIGQUIT)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
