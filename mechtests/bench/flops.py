"""Analytic FLOP counting for ``mechtests bench``, driven by the tokens that actually run.

Every linear layer inside the decoder layers counts ``2 x in x out`` per row it is called on
(a pre-hook on each ``nn.Linear``, so code that calls a block's projections directly, as the
suffix patching engine does for every block, is counted too). Per decoder-layer call with
``b x q`` query tokens attending to ``k`` keys, the attention scores add

    4 x b x q x k x n_heads x head_dim        (QK^T and AV, the full b x q x k score block)

and per row projected onto the vocabulary ``2 x vocab x d_model``. Norm gains and biases are
negligible and left out. ``k`` is the attention mask's key length (a 4-D mask) or the cached
prefix plus ``q``, so padding, cached prefixes (KV-cached
generation) and the causal upper triangle are all counted: this is the work issued, not the
minimal work. The suffix engine calls the blocks' modules, not the blocks, so its attention
scores are left out (about 6% of its FLOPs on the organism's 70-token prompts at d = 128, under
0.5% at 8B widths). Gemma-2's sliding-window layers are counted as full
attention (the window is 4096 tokens, longer than every prompt here).

Reference peaks (dense bf16 tensor-core FLOP/s, vendor datasheets) are in
:data:`DATASHEET_BF16`; elsewhere (CPU, unknown GPUs) :func:`measured_matmul_peak` times a
large bf16 matmul on the device, which is the practical ceiling for this code.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["DATASHEET_BF16", "install_flop_hooks", "measured_matmul_peak", "reference_peak",
           "weight_bytes"]

# dense (no sparsity) bf16 tensor FLOP/s; matched against torch.cuda.get_device_name()
DATASHEET_BF16 = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),  # SXM5
    ("H200", 989e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("A10G", 70e12),
    ("A10", 125e12),
)

AddFn = Callable[..., None]


def weight_bytes(model: torch.nn.Module) -> tuple[int, int]:
    """Bytes and element count of ``model``'s distinct parameters (tied ones once)."""
    seen: dict[int, torch.Tensor] = {}
    for p in model.parameters():
        seen.setdefault(id(p), p)
    return (sum(p.numel() * p.element_size() for p in seen.values()),
            sum(p.numel() for p in seen.values()))


def _submodule(root: Any, path: str) -> Any:
    return root.get_submodule(path)


def install_flop_hooks(model: Any, spec: Any, add: AddFn) -> list[Any]:
    """Forward pre-hooks on every decoder layer and on the unembedding that call
    ``add(flops, layer_tokens=..., head_rows=...)``; returns their handles."""
    layers = _submodule(model, spec.layers)
    head = _submodule(model, spec.unembed)
    config = model.config
    heads = int(config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    head_flops = 2 * head.weight.shape[0] * head.weight.shape[1]
    handles = []

    def linear_pre(m: Any, args: tuple[Any, ...]) -> None:
        x = args[0]
        rows = int(x.numel() // x.shape[-1])
        add(float(2 * m.in_features * m.out_features * rows))

    for layer in layers:
        for sub in layer.modules():
            if isinstance(sub, torch.nn.Linear):
                handles.append(sub.register_forward_pre_hook(linear_pre))

    def make(index: int) -> Callable[..., None]:
        def pre(_m: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            hidden = args[0] if args else kwargs.get("hidden_states")
            if not isinstance(hidden, torch.Tensor):
                return
            b, q = int(hidden.shape[0]), int(hidden.shape[1])
            mask = kwargs.get("attention_mask")
            if isinstance(mask, torch.Tensor) and mask.dim() == 4:
                keys = int(mask.shape[-1])
            else:
                cache: Any = kwargs.get("past_key_values") or kwargs.get("cache")
                seq_length = getattr(cache, "get_seq_length", None)
                past = int(seq_length(index)) if callable(seq_length) else 0
                keys = past + q
            flops = 4 * b * q * keys * heads * head_dim
            add(float(flops), layer_tokens=b * q if index == 0 else 0)
        return pre

    for i, layer in enumerate(layers):
        handles.append(layer.register_forward_pre_hook(make(i), with_kwargs=True))

    def head_pre(_m: Any, args: tuple[Any, ...]) -> None:
        x = args[0]
        rows = int(x.numel() // x.shape[-1])
        add(float(head_flops * rows), head_rows=rows)

    handles.append(head.register_forward_pre_hook(head_pre))
    return handles


def measured_matmul_peak(device: torch.device, seconds: float = 0.3) -> float:
    """FLOP/s of a square bf16 matmul on ``device`` (best of a short loop). On CPU per second
    of process CPU time (``time.process_time``), so that other processes on a shared machine
    do not lower it; compare it with a phase's FLOPs per CPU second."""
    cuda = device.type == "cuda"
    clock = time.perf_counter if cuda else time.process_time
    n = 4096 if cuda else 1024
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    a @ b  # warm-up
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end or best == 0.0:
        if cuda:
            torch.cuda.synchronize()
        start = clock()
        for _ in range(4):
            a @ b
        if cuda:
            torch.cuda.synchronize()
        elapsed = clock() - start
        if elapsed > 0:
            best = max(best, 4 * 2 * n**3 / elapsed)
    return best


def reference_peak(device: torch.device, override_tflops: float | None = None
                   ) -> tuple[float, str]:
    """``(bf16 peak FLOP/s, where it comes from)``: the override, a datasheet value for a
    known GPU, else a measured bf16 matmul on ``device``."""
    if override_tflops:
        return override_tflops * 1e12, "given with --peak-tflops"
    if device.type == "cuda" and torch.cuda.is_available():
        name = torch.cuda.get_device_name(device)
        for key, value in DATASHEET_BF16:
            if key in name:
                return value, f"datasheet dense bf16 of {name}"
        return measured_matmul_peak(device), f"measured bf16 matmul on {name}"
    threads = torch.get_num_threads()
    return (measured_matmul_peak(device),
            f"measured bf16 matmul per CPU second ({threads} thread{'s' if threads > 1 else ''})")
