"""Custom components of the DDAD bundle, referenced from the configs as `scripts.<module>.<name>`.

One module per concept: networks, losses, scores, synthesis, transforms (image loading),
splits, phantoms, data, ensemble (training), evaluation, handlers, config_guard.
"""
