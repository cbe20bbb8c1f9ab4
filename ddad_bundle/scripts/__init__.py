"""Custom components of the DDAD bundle, referenced from the configs as `scripts.<module>.<name>`.

One module per concept: networks, losses, scores, synthesis, transforms (image loading),
splits, folders, phantoms, preparation, data, ensemble (stage-1 training), refinement (stage 2),
pipeline, evaluation, reports, figures, metrics, inference, export, handlers, config_guard,
files (atomic writes), distributed (stage 1 under torchrun).
"""
