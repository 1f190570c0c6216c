"""Loading one checkpoint behind the :class:`~mechtests.engine.backend.Backend` protocol.

``load_backend`` reads a local HuggingFace directory offline (safetensors only, no remote
code, eager attention so that hooks see the same numbers on every backend) and wraps it in the
hooks backend (``backend="hf"``) or TransformerLens's ``TransformerBridge``
(``backend="transformer-lens"``). torch and transformers are imported only when a model loads.

Example:
    >>> backend = load_backend(Path("ckpt/base"), device="cpu")           # doctest: +SKIP
    >>> backend.cache(backend.tokenize(["The sky is"]), ["blocks.0.hook_resid_post"], [-1])
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mechtests.errors import CheckpointError, ConfigError
from mechtests.phases import one_item, timed_phase

if TYPE_CHECKING:
    from mechtests.engine.backend import Backend

__all__ = ["BACKENDS", "DTYPES", "load_backend", "load_hf", "quiet_progress"]

BACKENDS = ("hf", "transformer-lens")
DTYPES = ("float32", "bfloat16", "float16")


@timed_phase("load", items=one_item)
def load_backend(
    path: Path,
    *,
    device: str = "auto",
    dtype: str = "float32",
    backend: str = "hf",
    name: str = "",
) -> Backend:
    """Load the checkpoint in ``path`` onto ``device`` in ``dtype`` behind ``backend``.

    ``device="auto"`` means CUDA when available, else CPU. Errors are a
    :class:`~mechtests.errors.CheckpointError` naming the path and the fix.
    """
    if backend not in BACKENDS:
        raise ConfigError(
            f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}. "
            "Fix: pass --mechtests-backend hf or transformer-lens."
        )
    model, tokenizer = load_hf(path, device=device, dtype=dtype)
    label = name or Path(path).name
    if backend == "hf":
        from mechtests.engine.hf_backend import HooksBackend

        return HooksBackend(model, tokenizer, name=label)
    from mechtests.engine.tl_backend import BridgeBackend

    return BridgeBackend(model, tokenizer, name=label)


def _placement(torch_device: Any, requested: str) -> dict[str, Any]:
    """Load straight onto the GPU (no CPU copy of an 8B model); with several visible GPUs and no
    explicit index, shard the model over them with accelerate's ``device_map="auto"``."""
    import torch

    if torch_device.type != "cuda":
        return {}
    if requested in ("auto", "cuda") and torch.cuda.device_count() > 1:
        return {"device_map": "auto"}
    return {"device_map": str(torch_device)}


def load_hf(path: Path, *, device: str = "auto", dtype: str = "float32") -> tuple[Any, Any]:
    """The HF model (eval mode, no grad) and left-padding tokenizer in ``path``."""
    import torch

    if dtype not in DTYPES:
        raise ConfigError(
            f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}. "
            "Fix: pass --mechtests-dtype float32 (or bfloat16 on a GPU)."
        )
    path = Path(path)
    if not (path / "config.json").is_file():
        raise CheckpointError(
            f"checkpoint directory {path} has no config.json; expected a HuggingFace "
            "save_pretrained directory. Fix: point at the folder holding config.json and "
            "*.safetensors."
        )
    target = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    try:
        torch_device = torch.device(target)
    except RuntimeError:
        raise ConfigError(
            f"unknown device {device!r}; expected auto, cpu, cuda or cuda:N. "
            "Fix: pass --mechtests-device auto."
        ) from None
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mechtests.engine.random_weights import instantiate as instantiate_random
    from mechtests.engine.random_weights import is_random_weights

    try:
        with quiet_progress():
            tokenizer = _tokenizer_class(path, AutoTokenizer).from_pretrained(
                path, local_files_only=True, trust_remote_code=False
            )
            if is_random_weights(path):  # shape: checkpoints: no weights
                model = instantiate_random(path, torch_device, getattr(torch, dtype))
            else:
                model = AutoModelForCausalLM.from_pretrained(
                    path,
                    local_files_only=True,
                    use_safetensors=True,
                    trust_remote_code=False,
                    attn_implementation="eager",
                    dtype=getattr(torch, dtype),
                    **_placement(torch_device, device),
                )
    except Exception as exc:
        raise CheckpointError(
            f"cannot load the checkpoint in {path} ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); expected a causal-LM "
            "save_pretrained directory with *.safetensors weights and tokenizer files. Fix: "
            "re-save it with save_pretrained(safe_serialization=True) and the tokenizer "
            "alongside, or delete it to have a built-in checkpoint rebuilt."
        ) from exc
    loaded: Any = model
    if getattr(loaded, "hf_device_map", None) is None:
        loaded = loaded.to(torch_device)
    loaded = loaded.eval()
    loaded.requires_grad_(False)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return loaded, tokenizer


def _tokenizer_class(path: Path, auto: Any) -> Any:
    """The generic fast tokenizer when ``tokenizer_config.json`` declares it, else ``auto``.

    transformers 5 ``AutoTokenizer`` swaps in the model type's own tokenizer class for some
    architectures (e.g. Qwen2) even when the checkpoint declares the generic backend, which
    rebuilds a custom ``tokenizer.json`` (such as the tiny checkpoints' word-level one) wrongly.
    """
    import json

    from transformers import PreTrainedTokenizerFast

    config_file = path / "tokenizer_config.json"
    declared = None
    if config_file.is_file():
        declared = json.loads(config_file.read_text()).get("tokenizer_class")
    if declared in _GENERIC_TOKENIZERS and (path / "tokenizer.json").is_file():
        return PreTrainedTokenizerFast
    return auto


_GENERIC_TOKENIZERS = ("TokenizersBackend", "PreTrainedTokenizerFast")


@contextmanager
def quiet_progress() -> Iterator[None]:
    """Hide transformers' own progress bars (weight loading/saving) inside the block."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if bars:
            hf_logging.enable_progress_bar()
