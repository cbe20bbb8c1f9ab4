"""What turns network outputs into anomaly evidence: losses, maps and scores, synthetic anomalies, the trained pipeline, metrics."""
