"""Data: image readers, split files, folder trees, phantoms and cached tensors."""
