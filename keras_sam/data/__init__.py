"""Datasets generated locally for the demo and the examples (nothing is downloaded)."""
