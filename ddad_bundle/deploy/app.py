"""The DDAD MONAI Deploy application: loader -> bundle inference -> result writer.

``DDADDeployApp`` wires the three operators of ``ddad_bundle.deploy.operators`` with the paths
the SDK's argument parser reads (``-i`` input folder or file, ``-o`` output folder, ``-m`` the
exported ``model.ts`` or a folder holding it; in a MONAI Application Package the same come from
``HOLOSCAN_INPUT_PATH``, ``HOLOSCAN_OUTPUT_PATH`` and ``HOLOSCAN_MODEL_PATH``). The source
operator runs once (``CountCondition``), so one invocation scores the whole input and exits.

Example::

    python -m ddad_bundle.deploy -i dicom_in/ -o results/ -m runs/demo/cxr_phantom_ae/models/model.ts
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

# The operators import the bundle's own code as `scripts.*`, as the bundle configs do.
BUNDLE_ROOT = Path(__file__).resolve().parents[1]
if str(BUNDLE_ROOT) not in sys.path:
    sys.path.insert(0, str(BUNDLE_ROOT))

from holoscan.conditions import CountCondition  # noqa: E402
from monai.deploy.core import Application  # noqa: E402

from ddad_bundle import __version__  # noqa: E402
from ddad_bundle.deploy.operators import (  # noqa: E402
    BundleInferenceOperator,
    ImageFolderLoaderOperator,
    ResultWriterOperator,
)

logger = logging.getLogger("ddad.deploy")


class DDADDeployApp(Application):
    """Scores a folder of DICOM CR/DX instances or PNG/JPEG images with an exported model (DDAD or SALAD)."""

    name = "ddad_anomaly_detection"
    description = "DDAD anomaly scores, labels and heat maps (JSON, DICOM Secondary Capture, PNG) for CR/DX images"
    version = __version__

    def compose(self):
        app_context = Application.init_app_context(self.argv)
        input_path, output_path = Path(app_context.input_path), Path(app_context.output_path)
        logger.info("input %s, output %s, model %s", input_path, output_path, app_context.model_path)
        loader = ImageFolderLoaderOperator(self, CountCondition(self, 1), folder=input_path, name="loader")
        scorer = BundleInferenceOperator(
            self, app_context=app_context, input_root=input_path, output_dir=output_path, name="ddad_inference"
        )
        writer = ResultWriterOperator(self, folder=output_path, name="writer")
        self.add_flow(loader, scorer, {("items", "items")})
        self.add_flow(scorer, writer, {("results", "results")})


def main() -> None:
    DDADDeployApp().run()


if __name__ == "__main__":
    main()
