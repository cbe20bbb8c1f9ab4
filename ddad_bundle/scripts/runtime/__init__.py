"""Runtime glue shared by every layer: config checks and run records, atomic file writes."""
