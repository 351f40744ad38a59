"""Entry point: ``python -m sglang_backend.testing [SGLang flags]``."""

from __future__ import annotations

import sys

from sglang_backend.testing._launcher import main

if __name__ == "__main__":
    sys.exit(main())
