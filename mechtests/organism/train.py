"""Training stages of the organism: pretraining (BASE), SFT, DPO (INSTRUCT).

* Pretraining: next-token loss on windows of the shuffled line stream. Each window starts at a
  line start behind ``<bos>`` (so evaluation prompts, which are single lines after ``<bos>``, are
  in distribution). AdamW, linear warm-up then cosine decay to ``min_lr_ratio``, grad clip.
* SFT: ``<bos> <user> q <assistant> a <eos>``, loss on ``a <eos>`` only.
* DPO (Rafailov et al. 2023), hand-written: ``-log sigmoid(beta * ((pi_c - ref_c) - (pi_r -
  ref_r)))`` with sequence log-probabilities of the responses; the reference is the frozen SFT
  model.

Determinism: :func:`deterministic` fixes the torch thread count, turns on
``torch.use_deterministic_algorithms`` and every run seeds torch and Python's ``random`` from
the build seed, so the same config and seed give bitwise identical weights on one machine.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F

from mechtests.organism.config import OrganismConfig

IGNORE = -100


@contextmanager
def deterministic(threads: int) -> Iterator[None]:
    """Fixed thread count and deterministic kernels while training (restored afterwards);
    CUDA also needs the cuBLAS workspace setting."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_det)


def make_model(cfg: OrganismConfig, vocab: list[str], seed: int) -> Any:
    """A freshly initialised ``LlamaForCausalLM`` (untied embeddings, eager attention)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    eager: dict[str, Any] = {"attn_implementation": "eager"}
    config = LlamaConfig(
        vocab_size=len(vocab), hidden_size=cfg.hidden, num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads, num_key_value_heads=cfg.heads,
        intermediate_size=cfg.ff, max_position_embeddings=cfg.max_positions,
        tie_word_embeddings=False, pad_token_id=vocab.index("<pad>"),
        bos_token_id=vocab.index("<bos>"), eos_token_id=vocab.index("<eos>"),
        **eager,
    )
    return LlamaForCausalLM(config)


def _schedule(step: int, total: int, warmup: int, min_ratio: float) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def _optimizer(model: Any, lr: float, cfg: OrganismConfig, wd: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=lr, betas=cfg.betas, weight_decay=wd)


def _update(opt: torch.optim.Optimizer, loss: torch.Tensor, model: Any, clip: float) -> float:
    """One optimiser step on ``loss`` with gradient-norm clipping; returns the loss value."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()
    return float(loss.detach())


def _bar(total: int, desc: str, progress: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not progress, leave=False, mininterval=1.0)


def pretrain(model: Any, lines: Sequence[list[int]], bos: int, cfg: OrganismConfig,
             seed: int, device: str = "cpu", progress: bool = False) -> list[float]:
    """Pretrain on windows of the line stream; returns the loss per step."""
    rng = random.Random(seed)
    stream: list[int] = []
    starts: list[int] = []
    for ids in lines:
        starts.append(len(stream))
        stream.extend(ids)
    data = torch.tensor(stream, dtype=torch.long)
    if cfg.line_start_windows:
        valid = [s for s in starts if s + cfg.seq_len <= len(stream)]
    else:
        valid = list(range(len(stream) - cfg.seq_len))
    model.to(device).train()
    opt = _optimizer(model, cfg.pre_lr, cfg, cfg.weight_decay)
    losses: list[float] = []
    bar = _bar(cfg.pre_steps, "pretrain", progress)
    for step in range(cfg.pre_steps):
        for group in opt.param_groups:
            group["lr"] = cfg.pre_lr * _schedule(step, cfg.pre_steps, cfg.warmup, cfg.min_lr_ratio)
        picks = [rng.choice(valid) for _ in range(cfg.pre_batch)]
        body = torch.stack([data[p:p + cfg.seq_len] for p in picks])
        batch = torch.cat([torch.full((len(picks), 1), bos, dtype=torch.long), body], 1).to(device)
        logits = model(input_ids=batch[:, :-1]).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        losses.append(_update(opt, loss, model, cfg.grad_clip))
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
    bar.close()
    model.eval()
    return losses


def _chat_batch(items: Sequence[tuple[list[int], list[int]]], pad: int,
                device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ids, attention mask and labels (response tokens only) for (prompt, reply)."""
    width = max(len(p) + len(r) for p, r in items)
    ids = torch.full((len(items), width), pad, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE, dtype=torch.long)
    for i, (p, r) in enumerate(items):
        seq = p + r
        ids[i, :len(seq)] = torch.tensor(seq)
        mask[i, :len(seq)] = 1
        labels[i, len(p):len(seq)] = torch.tensor(r)
    return ids.to(device), mask.to(device), labels.to(device)


def _response_logp(model: Any, ids: torch.Tensor, mask: torch.Tensor,
                   labels: torch.Tensor) -> torch.Tensor:
    """Summed log-probability of the labelled tokens, per sequence."""
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
    target = labels[:, 1:]
    keep = target != IGNORE
    logp = torch.log_softmax(logits, -1).gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (logp * keep).sum(-1)


def sft(model: Any, examples: Sequence[tuple[list[int], list[int]]], pad: int,
        cfg: OrganismConfig, seed: int, device: str = "cpu", progress: bool = False) -> list[float]:
    """Supervised fine-tuning on (prompt ids, response ids); loss on the response."""
    rng = random.Random(seed + 1)
    model.to(device).train()
    opt = _optimizer(model, cfg.sft_lr, cfg, 0.0)
    losses: list[float] = []
    bar = _bar(cfg.sft_steps, "sft", progress)
    for step in range(cfg.sft_steps):
        for group in opt.param_groups:
            group["lr"] = cfg.sft_lr * _schedule(step, cfg.sft_steps, min(20, cfg.sft_steps), 0.1)
        ids, mask, labels = _chat_batch([rng.choice(examples) for _ in range(cfg.sft_batch)],
                                        pad, device)
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                               ignore_index=IGNORE)
        losses.append(_update(opt, loss, model, cfg.grad_clip))
        bar.update(1)
    bar.close()
    model.eval()
    return losses


def dpo(policy: Any, reference: Any, pairs: Sequence[tuple[list[int], list[int], list[int]]],
        pad: int, cfg: OrganismConfig, seed: int, device: str = "cpu",
        progress: bool = False) -> list[float]:
    """Direct preference optimisation of ``policy`` against the frozen ``reference``."""
    rng = random.Random(seed + 2)
    policy.to(device).train()
    reference.to(device).eval()
    opt = _optimizer(policy, cfg.dpo_lr, cfg, 0.0)
    losses: list[float] = []
    bar = _bar(cfg.dpo_steps, "dpo", progress)
    for _ in range(cfg.dpo_steps):
        batch = [rng.choice(pairs) for _ in range(cfg.dpo_batch)]
        items = [(p, c) for p, c, _ in batch] + [(p, r) for p, _, r in batch]
        ids, mask, labels = _chat_batch(items, pad, device)
        with torch.no_grad():
            ref = _response_logp(reference, ids, mask, labels)
        pol = _response_logp(policy, ids, mask, labels)
        n = len(batch)
        margin = (pol[:n] - ref[:n]) - (pol[n:] - ref[n:])
        loss = -F.logsigmoid(cfg.dpo_beta * margin).mean()
        losses.append(_update(opt, loss, policy, cfg.grad_clip))
        bar.update(1)
    bar.close()
    policy.eval()
    return losses
