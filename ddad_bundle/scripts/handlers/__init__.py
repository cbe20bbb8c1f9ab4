"""Ignite handlers: checkpoints and progress, evaluation reports and figures."""
