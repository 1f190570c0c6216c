"""Self-distillation of helpful answers and the LoRA training loop.

Harmless requests are answered by the *base* model in a plain ``Question: ... / Answer:`` frame
(greedy); the adapter then learns to give that answer in Gemma's chat format, and a refusal to
harmful requests. The loss covers the answer tokens (and ``<end_of_turn>``) only; logits are
computed for the last positions only (Gemma's 262k-word unembedding dominates a full forward).
The embedding (tied to the unembedding) is frozen: LoRA adapts the attention and MLP projections.
To keep the base's language modelling, each step also adds ``kl_weight`` times the KL divergence
from the base (the adapter disabled) to the adapted model on the harmless training requests as
bare text (no chat format), a few per step.
"""

from __future__ import annotations

import math
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from mechtests.methods.refusal_score import RefusalScorer
from mechtests.posttrain.data import Example, chat_answer, chat_prompt, distill_prompt

Log = Callable[[str], None]
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class TrainConfig:
    """The recipe's knobs (recorded in the adapter card)."""

    seed: int = 0
    n_harmful: int = 160
    n_harmless: int = 180
    steps: int = 80
    batch_size: int = 8
    lr: float = 5e-4
    warmup_steps: int = 8
    rank: int = 8
    alpha: int = 16
    max_answer_tokens: int = 32
    max_prompt_tokens: int = 48
    kl_weight: float = 1.0
    kl_batch_size: int = 4


def greedy_generate(model: Any, tokenizer: Any, prompts: Sequence[str], max_new_tokens: int,
                    batch_size: int = 16) -> list[str]:
    """Greedy continuations (decoded, special tokens kept out) of left-padded prompts."""
    tokenizer.padding_side = "left"
    out: list[str] = []
    with torch.no_grad():
        for start in range(0, len(prompts), batch_size):
            enc = tokenizer(list(prompts[start:start + batch_size]), return_tensors="pt",
                            padding=True)
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
            out += tokenizer.batch_decode(gen[:, enc.input_ids.shape[1]:],
                                          skip_special_tokens=True)
    return out


def clean_answer(text: str) -> str:
    """The first paragraph of a distilled answer, cut at a new ``Question:`` and at the last
    complete sentence when there is one."""
    text = text.split("Question:")[0].strip().split("\n\n")[0].strip()
    text = re.sub(r"\n\s*\d+\.?\s*$", "", text)  # a list item cut off after its number
    last = max(text.rfind(". "), text.rfind(".\n"), len(text) - 1 if text.endswith(".") else -1)
    return text[: last + 1].strip() if last > 0 else text


def distill_answers(model: Any, tokenizer: Any, examples: Sequence[Example],
                    max_new_tokens: int, log: Log) -> list[Example]:
    """Harmless examples get the base model's answer; those whose answer is empty or opens like a
    refusal (it would teach refusing harmless requests) are dropped."""
    scorer = RefusalScorer.paper()
    todo = [e for e in examples if not e.harmful]
    started = time.perf_counter()
    answers = greedy_generate(model, tokenizer, [distill_prompt(e.instruction) for e in todo],
                              max_new_tokens)
    by_instruction = {e.instruction: clean_answer(a) for e, a in zip(todo, answers, strict=True)}
    kept = [e for e in examples if e.harmful]
    for e in todo:
        answer = by_instruction[e.instruction]
        if answer and not scorer.is_refusal(answer):
            kept.append(replace(e, answer=answer))
    position = {e.instruction: i for i, e in enumerate(examples)}
    kept.sort(key=lambda e: position[e.instruction])  # the seeded order of the requests
    log(f"distilled {len(todo)} answers in {time.perf_counter() - started:.0f} s; "
        f"kept {len(kept)} of {len(examples)} examples")
    return kept


def encode(tokenizer: Any, example: Example, cfg: TrainConfig) -> tuple[list[int], int]:
    """Token ids of prompt + answer (BOS first) and the number of answer tokens at the end."""
    prompt = tokenizer(chat_prompt(example.instruction)).input_ids[: cfg.max_prompt_tokens]
    answer = tokenizer(chat_answer(example.answer), add_special_tokens=False).input_ids
    answer = answer[: cfg.max_answer_tokens]
    return prompt + answer, len(answer)


def batch_loss(model: Any, rows: Sequence[tuple[list[int], int]], pad_id: int) -> torch.Tensor:
    """Mean cross-entropy over the answer tokens of left-padded rows."""
    width = max(len(ids) for ids, _ in rows)
    keep = max(n for _, n in rows) + 1
    ids = torch.tensor([[pad_id] * (width - len(i)) + i for i, _ in rows])
    mask = torch.zeros_like(ids)
    for r, (i, _) in enumerate(rows):
        mask[r, width - len(i):] = 1
    labels = torch.full((len(rows), keep - 1), -100)
    for r, (i, n) in enumerate(rows):
        labels[r, keep - 1 - n:] = torch.tensor(i[len(i) - n:])
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions,
                   logits_to_keep=keep).logits[:, :-1]
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),
                                             labels.reshape(-1), ignore_index=-100)


def plain_kl(model: Any, rows: Sequence[list[int]], pad_id: int) -> torch.Tensor:
    """Mean KL(base || adapted) of the next-token distributions over plain-text rows (right
    padded); the base is the same model with its adapter disabled."""
    width = max(len(i) for i in rows)
    ids = torch.tensor([i + [pad_id] * (width - len(i)) for i in rows])
    mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i in rows])
    with torch.no_grad(), model.disable_adapter():
        reference = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), -1)
    current = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), -1)
    per_token = (reference.exp() * (reference - current)).sum(-1)
    return (per_token * mask).sum() / mask.sum()


def lora_model(model: Any, cfg: TrainConfig) -> Any:
    """``model`` wrapped with LoRA adapters on every attention and MLP projection."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=0.0, bias="none",
                      target_modules=list(LORA_TARGETS), task_type="CAUSAL_LM")
    return get_peft_model(model, lora)


def train_lora(model: Any, tokenizer: Any, examples: Sequence[Example], cfg: TrainConfig,
               log: Log) -> tuple[Any, list[float]]:
    """Seeded LoRA training; returns the peft model and the loss of every step."""
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    peft_model = lora_model(model, cfg)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)

    def schedule(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        done = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * done))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    rows = [encode(tokenizer, e, cfg) for e in examples]
    plain = [tokenizer(e.instruction).input_ids[: cfg.max_prompt_tokens]
             for e in examples if not e.harmful]
    plain_order: list[int] = []
    order: list[int] = []
    losses = []
    peft_model.train()
    started = time.perf_counter()
    for step in range(cfg.steps):
        if len(order) < cfg.batch_size:
            fresh = list(range(len(rows)))
            rng.shuffle(fresh)
            order += fresh
        batch, order = order[: cfg.batch_size], order[cfg.batch_size:]
        loss = batch_loss(peft_model, [rows[i] for i in batch], tokenizer.pad_token_id)
        if cfg.kl_weight and plain:
            if len(plain_order) < cfg.kl_batch_size:
                fresh = list(range(len(plain)))
                rng.shuffle(fresh)
                plain_order += fresh
            texts, plain_order = plain_order[: cfg.kl_batch_size], plain_order[cfg.kl_batch_size:]
            loss = loss + cfg.kl_weight * plain_kl(peft_model, [plain[i] for i in texts],
                                                   tokenizer.pad_token_id)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step % 10 == 0 or step == cfg.steps - 1:
            log(f"step {step + 1}/{cfg.steps} loss {loss.item():.3f} "
                f"({time.perf_counter() - started:.0f} s)")
    peft_model.eval()
    return peft_model, losses
