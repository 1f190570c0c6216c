"""Random-weight instantiation of a checkpoint directory that holds no weights.

A directory with ``config.json``, tokenizer files and the marker file :data:`MARKER` (written by
:mod:`mechtests.checkpoints.shape` for the ``shape:`` scheme) is a *random-weight checkpoint*:
timing and memory of the claim areas do not depend on the weights' values, so a model of a real
checkpoint's architecture with random weights costs what the real one costs, and no 8B weights
are ever written to disk.

Method: the model is built on the ``meta`` device (no memory), every parameter is then
allocated once, directly in the configured dtype on the target device (tied parameters stay
tied: one allocation per distinct tensor), and filled in place by transformers' own
``initialize_weights`` (normal(0, ``initializer_range``) for linear and embedding weights, the
architecture's norm init, recomputed rotary frequencies) under a seeded RNG. There is no fp32
copy and no CPU copy of a GPU model: the peak is one model in its dtype.

The marker is JSON: ``{"seed": int, "family": str, "role": str, "source": str, ...}``; the seed
makes the weights deterministic per role (base, sft, instruct and control get different seeds).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

__all__ = ["MARKER", "instantiate", "is_random_weights", "materialize"]

MARKER = "mechtests_random_weights.json"


def is_random_weights(path: Path) -> bool:
    """Whether ``path`` is a random-weight checkpoint (it holds :data:`MARKER`)."""
    return (Path(path) / MARKER).is_file()


def instantiate(path: Path, device: torch.device, dtype: torch.dtype) -> Any:
    """The causal LM of ``path``'s ``config.json`` with seeded random weights, built on
    ``device`` in ``dtype`` (eager attention, like every other load)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    marker = json.loads((Path(path) / MARKER).read_text())
    seed = int(marker.get("seed", 0))
    config = AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(
            config, dtype=dtype, attn_implementation="eager", trust_remote_code=False
        )
    materialize(model, device)
    for module in model.modules():  # from_config marked the meta tensors as initialised
        module.__dict__.pop("_is_hf_initialized", None)
        for tensor in (*module.parameters(recurse=False), *module.buffers(recurse=False)):
            tensor.__dict__.pop("_is_hf_initialized", None)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        torch.manual_seed(seed)
        model.initialize_weights()
    return model


def materialize(model: torch.nn.Module, device: torch.device) -> None:
    """Replace every meta parameter and buffer of ``model`` by an uninitialised tensor of the
    same shape and dtype on ``device``, allocating each distinct tensor once (ties kept)."""
    made: dict[int, torch.Tensor] = {}
    for module in model.modules():
        for name, param in list(module._parameters.items()):
            if param is None:
                continue
            if id(param) not in made:
                empty = torch.empty_like(param, device=device)
                made[id(param)] = torch.nn.Parameter(empty, requires_grad=False)
            module._parameters[name] = made[id(param)]  # type: ignore[assignment]
        for name, buf in list(module._buffers.items()):
            if buf is None:
                continue
            if id(buf) not in made:
                made[id(buf)] = torch.empty_like(buf, device=device)
            module._buffers[name] = made[id(buf)]
