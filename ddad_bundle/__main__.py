"""``python -m ddad_bundle``: see ``ddad_bundle.cli``."""

import sys

from ddad_bundle.cli import main

sys.exit(main())
