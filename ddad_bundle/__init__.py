"""DDAD MONAI Bundle: dual-distribution discrepancy anomaly detection for medical images.

This folder is both a MONAI Bundle (``configs/``, ``scripts/``, ``models/``, ``docs/``) and an
importable package whose ``python -m ddad_bundle`` command wraps the bundle's workflows.
"""

import warnings
from pathlib import Path

# With the optional `deploy` extra installed, `import monai` also imports the MONAI Deploy SDK's
# holoscan, which warns about the thread stack size on every start. Nothing here runs holoscan's
# threads (the Deploy application runs its operators in one process), so the warning is noise.
warnings.filterwarnings("ignore", message="Current stack size", category=RuntimeWarning)

BUNDLE_ROOT = Path(__file__).resolve().parent
CONFIG_DIR = BUNDLE_ROOT / "configs"
__version__ = "0.5.0"
