"""``python -m sglang_backend``: the ``sglang-backend`` command."""

import sys

from .cli import main

sys.exit(main())
