"""Deployment: the TorchScript export of a trained run."""
