"""MONAI Deploy application for the DDAD bundle: DICOM CR/DX or PNG images in, anomaly scores,
labels and heat maps out, with the exported ``model.ts`` and the inference config inside it.

    python -m ddad_bundle.deploy -i <input folder or file> -o <output folder> -m <model.ts>

Needs the optional ``deploy`` dependencies (``pip install -e ".[deploy]"``: monai-deploy-app-sdk
and highdicom). See ``docs/deploy.md`` for the outputs, the device choice and packaging as a
MONAI Application Package (``monai-deploy package``).
"""
