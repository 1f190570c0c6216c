"""Root conftest: keep it thin. Options, fixtures and the claim matrix come from the mechtests
plugin (``mechtests/plugin/``, loaded through its pytest11 entry point)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
