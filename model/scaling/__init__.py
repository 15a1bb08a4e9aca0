"""Chinchilla-style scaling: compute-optimal laws, fits, model shapes and sweeps."""
