"""Datasets: loaders for the paper's real formats, the built-in organism data, prompt building."""
