"""Shared test set-up: the bundle root goes on the import path, as `monai.bundle run` expects,
so that tests import the bundle's code as `scripts.<module>` exactly like the configs do."""

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLE_ROOT = REPO_ROOT / "ddad_bundle"
SHARED = REPO_ROOT.parent / "shared"

if str(BUNDLE_ROOT) not in sys.path:
    sys.path.insert(0, str(BUNDLE_ROOT))
