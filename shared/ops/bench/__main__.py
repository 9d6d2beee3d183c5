"""``python -m shared.ops.bench``: what ``deploy/bench`` runs."""

import sys

from shared.ops.bench.run import main

sys.exit(main())
