"""Layers and inference rewrites shared by the model families."""
