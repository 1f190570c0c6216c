"""``mechtests posttrain build``: the real Gemma-3-270M base -> an ``instruct`` LoRA adapter.

Steps (seeded): resolve the base (GGUF converted once into the cache); draw training requests
with the paper's refusal test split held out (:mod:`mechtests.posttrain.data`); measure the base
gates; distill helpful answers from the base; train LoRA; measure the instruct gates; write the
adapter (``adapter_model.safetensors``), ``card.json``, ``README.md`` and ``NOTICE``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import yaml

from mechtests.claims.model import meets
from mechtests.data.sources import DatasetSource
from mechtests.posttrain.base import file_sha256, resolve_base
from mechtests.posttrain.data import REFUSALS, build_refusal_data
from mechtests.posttrain.evaluate import measure
from mechtests.posttrain.train import TrainConfig, distill_answers, train_lora

FAMILY = "gemma3-270m"
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")
NOTICE = """\
This adapter was trained on the weights of Gemma 3 270M (Google) and is a derivative of them.
Gemma is provided under and subject to the Gemma Terms of Use
(https://ai.google.dev/gemma/terms); those terms, including the Gemma Prohibited Use Policy
(https://ai.google.dev/gemma/prohibited_use_policy), apply to this adapter and to any model
built by merging it into the Gemma weights. The training data are AdvBench harmful behaviours
(MIT) and Alpaca instructions (CC BY-NC 4.0).
"""


def gate_rules(thresholds: Path, family: str = FAMILY) -> dict[str, Any]:
    """The ``gates: <family>:`` rules of thresholds.yaml (``<role>_<metric>: {op, value}``)."""
    raw = yaml.safe_load(thresholds.read_text(encoding="utf-8")) or {}
    return dict((raw.get("gates") or {}).get(family) or {})


def failed_gates(values: Mapping[str, Mapping[str, float]],
                 rules: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """``"<role>.<metric> = v (needs op t)"`` for each rule a measured value breaks."""
    from mechtests.organism.gates import check

    return check(values, rules)


def adapter_hashes(directory: Path) -> dict[str, str]:
    return {name: file_sha256(directory / name) for name in ADAPTER_FILES}


def adapter_sha256(directory: Path) -> str:
    """One sha256 over the adapter's files (the merged model's cache key part)."""
    joined = "".join(f"{k}={v};" for k, v in sorted(adapter_hashes(directory).items()))
    return hashlib.sha256(joined.encode()).hexdigest()


def build(base_ref: str, source: DatasetSource, out: Path, cfg: TrainConfig, cache_dir: Path,
          thresholds: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """Train and write the adapter with its card; returns the card."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    torch.manual_seed(cfg.seed)
    base_dir, base_sha = resolve_base(base_ref, cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    data = build_refusal_data(source, cfg.n_harmful, cfg.n_harmless, cfg.seed)
    log(f"base {base_ref} ({base_sha[:12]}); {len(data.train)} training requests")
    base_values, base_texts = measure(model, tokenizer, source, data.harmful_test,
                                      data.harmless_test, cfg.seed, True, log)
    examples = distill_answers(model, tokenizer, data.train, cfg.max_answer_tokens, log)
    train_started = time.perf_counter()
    peft_model, losses = train_lora(model, tokenizer, examples, cfg, log)
    train_seconds = time.perf_counter() - train_started
    post_values, texts = measure(peft_model, tokenizer, source, data.harmful_test,
                                 data.harmless_test, cfg.seed, True, log)
    post_values["nll_shift"] = abs(post_values["nll"] - base_values["nll"])
    out.mkdir(parents=True, exist_ok=True)
    lora_config = peft_model.peft_config["default"]
    lora_config.base_model_name_or_path = base_ref  # the reference, not this machine's cache path
    lora_config.target_modules = sorted(lora_config.target_modules)  # a stable file, a stable hash
    peft_model.save_pretrained(out)
    rules = gate_rules(thresholds)
    gates = {"base": base_values, "instruct": post_values}
    card = {
        "name": f"{FAMILY} instruct LoRA adapter",
        "base": {"ref": base_ref, "sha256": base_sha},
        "recipe": dataclasses.asdict(cfg),
        "seeds": {"instruct": cfg.seed},
        "data_sha256": dict(data.sha256),
        "n_examples": {"harmful": sum(e.harmful for e in examples),
                       "harmless": sum(not e.harmful for e in examples)},
        "refusal_answers": list(REFUSALS),
        "losses": [round(x, 4) for x in losses],
        "train_seconds": round(train_seconds, 1),
        "total_seconds": round(time.perf_counter() - started, 1),
        "torch_threads": torch.get_num_threads(),
        "gates": gates,
        "gate_rules": rules,
        "failed_gates": failed_gates(gates, rules),
        "samples": {f"{role}_{kind}": [
            {"request": r, "reply": t} for r, t in zip(
                data.harmful_test if kind == "harmful" else data.harmless_test,
                (base_texts if role == "base" else texts)[kind][:3], strict=False)]
            for role in ("base", "instruct") for kind in ("harmful", "harmless")},
        "files_sha256": adapter_hashes(out),
    }
    (out / "card.json").write_text(json.dumps(card, indent=1) + "\n", encoding="utf-8")
    (out / "NOTICE").write_text(NOTICE, encoding="utf-8")
    (out / "README.md").write_text(render_card(card), encoding="utf-8")
    log(f"adapter written to {out}; failed gates: {card['failed_gates'] or 'none'}")
    return card


def render_card(card: Mapping[str, Any]) -> str:
    """The adapter's card as Markdown (recipe, data hashes, gates, timing, samples)."""
    recipe = ", ".join(f"{k} {v}" for k, v in card["recipe"].items())
    lines = [
        f"# {card['name']}", "",
        f"LoRA adapter that post-trains the Gemma-3-270M base ({card['base']['ref']}, GGUF "
        f"sha256 `{card['base']['sha256']}`) into an instruct model: refusals for harmful "
        "requests, helpful answers for harmless ones, in Gemma's chat format. Load it merged "
        "into the base with the checkpoint reference `lora:gemma3-270m@<base ref>`. Gemma's "
        "terms apply: see NOTICE.", "",
        "## Recipe", "",
        f"- `mechtests posttrain build` with {recipe}.",
        f"- Training examples after distillation: {card['n_examples']['harmful']} harmful "
        f"(AdvBench goals, paper code Refusal/utils.py) answered with a refusal drawn from "
        f"{len(card['refusal_answers'])} fixed ones; {card['n_examples']['harmless']} harmless "
        "(Alpaca instructions) answered with the base model's own greedy continuation of "
        "`Question: ...\\nAnswer:` (self-distillation: the adapter learns the chat format and "
        "when to refuse, not new content). The paper's refusal test split is held out.",
        "- LoRA on q/k/v/o and gate/up/down projections of every layer; embedding frozen; loss "
        "on the answer tokens and `<end_of_turn>` only; AdamW, warmup then cosine.",
        f"- Training {card['train_seconds']:.0f} s, whole build {card['total_seconds']:.0f} s "
        f"on CPU with {card['torch_threads']} torch thread(s); final loss "
        f"{card['losses'][-1]:.3f}.", "",
        "## Data (sha256)", "",
        *[f"- `{k}`: `{v}`" for k, v in card["data_sha256"].items()], "",
        "## Gates (held-out data)", "",
        "| gate | measured | rule | result |", "| --- | --- | --- | --- |",
    ]
    for key, rule in card["gate_rules"].items():
        role, _, metric = key.partition("_")
        value = card["gates"].get(role, {}).get(metric)
        if value is None:
            continue
        ok = meets(value, rule["op"], rule["value"])
        lines.append(f"| {role}.{metric} | {value:.3f} | {rule['op']} {rule['value']} | "
                     f"{'PASS' if ok else 'FAIL'} |")
    lines += ["", "All measured values: `card.json` (`gates`).", "", "## Sample replies", ""]
    for group, rows in card["samples"].items():
        for row in rows:
            lines.append(f"- {group}: {row['request']!r} -> {row['reply']!r}")
    lines += ["", "## Files (sha256)", "",
              *[f"- `{k}`: `{v}`" for k, v in card["files_sha256"].items()], ""]
    return "\n".join(lines)
