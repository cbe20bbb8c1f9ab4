"""Command-line tooling built on the bundle: data-set preparation and the papers' experiments."""
