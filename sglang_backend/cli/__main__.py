"""``python -m sglang_backend.cli``: the ``sglang-backend`` command."""

import sys

from . import main

sys.exit(main())
