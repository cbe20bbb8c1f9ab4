"""Ignite engines: the stage-1 ensemble trainer (and its torchrun variant), the ASR-Net trainer, evaluation, inference."""
