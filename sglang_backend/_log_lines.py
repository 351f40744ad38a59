"""What the library reads in SGLang's log: the ready line and the startup phases.

Kept apart from the process code (and free of imports) so the stand-in server, which prints
these lines, can take them from here without loading the library's HTTP stack.
"""

from __future__ import annotations

import re

__all__ = ["PHASES", "READY_LINE"]

READY_LINE = "The server is fired up and ready to roll!"
"""SGLang 0.5.23 logs it the moment its status turns Up."""

# Startup phases, in order (wording varies by version; a miss only loses detail).
PHASES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"server_args=|ServerArgs\("), "parsing_args"),
    (re.compile(r"Load weight begin|Loading weights|Load weight"), "loading_weights"),
    (re.compile(r"KV Cache is allocated|Memory pool end|max_total_num_tokens="), "allocating_kv_cache"),
    (re.compile(r"Capture cuda graph begin|Capture cuda graph|Capturing batches"), "capturing_cuda_graphs"),
    (re.compile(r"Uvicorn running on|Application startup complete"), "warming_up"),
    (re.compile(re.escape(READY_LINE)), "ready"),
)
