"""``python -m shared.ops.top``: ``stack-top``."""

import sys

from shared.ops.top.app import main

sys.exit(main())
