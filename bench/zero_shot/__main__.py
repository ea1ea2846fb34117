"""``python -m bench.zero_shot``."""

import sys

from .cli import main

sys.exit(main())
