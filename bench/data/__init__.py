"""Datasets, preprocessing, resolution pyramids and the deterministic training stream."""
