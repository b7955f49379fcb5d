"""``python -m e2e.devcluster up|down|status``."""

import sys

from e2e.devcluster import main

sys.exit(main(sys.argv[1:]))
