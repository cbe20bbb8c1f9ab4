"""Custom components of the DDAD bundle, referenced from the configs as ``scripts.<layer>.<module>.<name>``.

One sub-package per layer, each depending only on the layers listed before it:

- ``runtime``: config checks and run records, atomic file writes;
- ``networks``: the stage-1 backbones, the ASR-Net, fused ensembles;
- ``data``: image readers, split files, folder trees, phantoms, cached tensors;
- ``scoring``: losses, maps and scores, synthetic anomalies, the trained pipeline, metrics;
- ``handlers``: checkpoints and progress, evaluation reports and figures;
- ``engines``: the stage-1 trainer (and torchrun), the ASR-Net trainer, evaluation, inference;
- ``deployment``: the TorchScript export;
- ``tools``: data-set preparation and the papers' experiments (command-line tooling).
"""
