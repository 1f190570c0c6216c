"""Build the organism: BASE, SFT, INSTRUCT (DPO) and the CONTROL base, gated, with a model card.

For each seed ``s, s+1, ...`` (at most ``max_seeds``): pretrain a base, check its gates, then
SFT and DPO and check their refusal gates; the first seed whose chain passes is kept. The
control base is pretrained the same way from seeds ``s + control_seed_offset + k`` until it
passes the base gates. If every allowed seed fails, :class:`~mechtests.errors.GateError` names
the numbers. The four checkpoints are ordinary HF directories (``save_pretrained``
safetensors and the word-level tokenizer) next to ``card.json`` and ``README.md`` (recipe,
seeds, gate table per attempt, timings, code version).

Example:
    >>> result = build(size_config("ci"), seed=0, out=Path("organism"))  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mechtests.errors import ConfigError, GateError
from mechtests.organism import corpus, gates, train
from mechtests.organism.config import CODE_VERSION, OrganismConfig
from mechtests.organism.datasets import write_datasets
from mechtests.organism.tokenizer import build_tokenizer, vocabulary
from mechtests.organism.world import make_world

ROLES = ("base", "sft", "instruct", "control")
THRESHOLDS = Path(__file__).resolve().parents[1] / "thresholds.yaml"
DATASETS_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "organism" / "datasets"


@dataclass
class BuildResult:
    """What a build produced: the card (also written to disk) and the output directory."""

    out: Path
    card: dict[str, Any] = field(default_factory=dict)


def gate_rules(path: Path = THRESHOLDS) -> dict[str, dict[str, Any]]:
    """The ``gates:`` section of thresholds.yaml."""
    rules = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("gates") or {}
    if not rules:
        raise ConfigError(f"{path} has no 'gates:' section. Fix: restore the organism gates.")
    return dict(rules)


def show_progress() -> bool:
    """Progress bars only on an interactive terminal outside CI and pytest-xdist workers."""
    quiet = os.environ.get("CI") or os.environ.get("PYTEST_XDIST_WORKER")
    return bool(sys.stderr.isatty() and not quiet)


class _Text:
    """Word-level encoding without the tokenizer round trip (same ids as the tokenizer)."""

    def __init__(self, vocab: list[str]) -> None:
        self.vocab = vocab
        self.ids = {w: i for i, w in enumerate(vocab)}
        self.bos, self.pad = self.ids["<bos>"], self.ids["<pad>"]
        self.eos = self.ids["<eos>"]

    def body(self, text: str) -> list[int]:
        return [self.ids[w] for w in text.split()]

    def encode(self, text: str) -> list[int]:
        return [self.bos, *self.body(text)]

    def decode(self, ids: list[int]) -> str:
        words = []
        for i in ids:
            if i == self.eos:
                break
            words.append(self.vocab[i])
        return " ".join(words)


def _check_vocab(text: _Text, lines: list[str]) -> None:
    missing = sorted({w for line in lines for w in line.split()} - set(text.ids))
    if missing:
        raise ConfigError(f"organism corpus words missing from the lexicon: {missing[:10]}. "
                          "Fix: add them to mechtests.organism.corpus.lexicon.")


def _train_base(cfg: OrganismConfig, seed: int, text: _Text, world: Any, device: str,
                progress: bool) -> tuple[Any, list[float]]:
    import random

    lines = corpus.pretraining_lines(world, cfg.corpus, random.Random(seed))
    _check_vocab(text, lines)
    model = train.make_model(cfg, text.vocab, seed)
    losses = train.pretrain(model, [text.body(line) for line in lines], text.bos, cfg, seed,
                            device, progress)
    return model, losses


def _gate_base(model: Any, text: _Text, world: Any) -> dict[str, Any]:
    return gates.base_gates(model, text.encode, text.ids, world, DATASETS_DIR)


def _gate_chat(model: Any, text: _Text, world: Any) -> dict[str, Any]:
    return gates.chat_gates(model, text.encode, text.decode, text.ids, world, text.pad)


def build(cfg: OrganismConfig, seed: int, out: Path, *, device: str = "cpu",
          progress: bool | None = None, rules: Mapping[str, Mapping[str, Any]] | None = None,
          log: Callable[[str], None] | None = None) -> BuildResult:
    """Train and gate the four roles into ``out``; GateError when every seed fails."""
    with train.deterministic(cfg.threads):
        return _build(cfg, seed, out, device, progress, rules, log)


def _build(cfg: OrganismConfig, seed: int, out: Path, device: str, progress: bool | None,
           rules: Mapping[str, Mapping[str, Any]] | None,
           log: Callable[[str], None] | None) -> BuildResult:
    import random

    progress = show_progress() if progress is None else progress
    rules = dict(gate_rules() if rules is None and cfg.gated else rules or {})
    say = log or (lambda _msg: None)
    world = make_world()
    if not DATASETS_DIR.is_dir():
        write_datasets(DATASETS_DIR, world)
    text = _Text(vocabulary(corpus.lexicon(world)))
    tokenizer = build_tokenizer(text.vocab, cfg.max_positions)
    t0 = time.perf_counter()
    attempts: list[dict[str, Any]] = []
    models: dict[str, Any] = {}
    values: dict[str, dict[str, Any]] = {}
    timings: dict[str, float] = {}
    base_seed: int | None = None
    for k in range(cfg.max_seeds):
        s = seed + k
        t = time.perf_counter()
        base, losses = _train_base(cfg, s, text, world, device, progress)
        timings[f"pretrain_seed{s}"] = time.perf_counter() - t
        got = {"base": _gate_base(base, text, world)}
        got["base"]["final_loss"] = losses[-1]
        failed = gates.check(got, _only(rules, "base"))
        if not failed:
            t = time.perf_counter()
            sft_model = copy.deepcopy(base)
            examples = corpus.sft_examples(world, cfg.corpus, random.Random(s + 1))
            train.sft(sft_model, [(text.encode(f"<user> {q} <assistant>"), text.body(f"{a} <eos>"))
                                  for q, a in examples], text.pad, cfg, s, device, progress)
            instruct = copy.deepcopy(sft_model)
            reference = copy.deepcopy(sft_model)
            pairs = corpus.dpo_pairs(world, cfg.corpus, random.Random(s + 2))
            train.dpo(instruct, reference, [
                (text.encode(f"<user> {q} <assistant>"), text.body(f"{c} <eos>"),
                 text.body(f"{r} <eos>")) for q, c, r in pairs], text.pad, cfg, s, device, progress)
            timings[f"post_seed{s}"] = time.perf_counter() - t
            got["sft"] = _gate_chat(sft_model, text, world)
            got["instruct"] = _gate_chat(instruct, text, world)
            failed = gates.check(got, _only(rules, "sft", "instruct"))
        attempts.append({"role": "base", "seed": s, "gates": got, "failed": failed})
        say(f"seed {s}: " + _summary(got) + (f"  FAILED {failed}" if failed else "  ok"))
        if not failed:
            base_seed = s
            models.update(base=base, sft=sft_model, instruct=instruct)
            values.update(got)
            break
    if base_seed is None:
        raise GateError(_gate_message(cfg, attempts))
    control_seed: int | None = None
    for k in range(cfg.max_seeds):
        s = seed + cfg.control_seed_offset + k
        t = time.perf_counter()
        control, losses = _train_base(cfg, s, text, world, device, progress)
        timings[f"pretrain_control_seed{s}"] = time.perf_counter() - t
        got = {"control": _gate_base(control, text, world)}
        got["control"]["final_loss"] = losses[-1]
        failed = gates.check(got, {k2.replace("base_", "control_", 1): v
                                   for k2, v in _only(rules, "base").items()})
        attempts.append({"role": "control", "seed": s, "gates": got, "failed": failed})
        say(f"control seed {s}: " + _summary(got) + (f"  FAILED {failed}" if failed else "  ok"))
        if not failed:
            control_seed = s
            models["control"] = control
            values.update(got)
            break
    if control_seed is None:
        raise GateError(_gate_message(cfg, attempts))
    timings["total"] = time.perf_counter() - t0
    card = _card(cfg, seed, base_seed, control_seed, values, attempts, timings, rules, device)
    _save(out, models, tokenizer, card)
    return BuildResult(out, card)


def _only(rules: Mapping[str, Mapping[str, Any]], *roles: str) -> dict[str, Any]:
    return {k: dict(v) for k, v in rules.items() if k.partition("_")[0] in roles}


def _summary(got: Mapping[str, Mapping[str, Any]]) -> str:
    parts = []
    for role, vals in got.items():
        for key, v in vals.items():
            if isinstance(v, float):
                parts.append(f"{role}.{key}={v:.2f}")
    return " ".join(parts)


def _gate_message(cfg: OrganismConfig, attempts: list[dict[str, Any]]) -> str:
    tried = "; ".join(f"{a['role']} seed {a['seed']}: {', '.join(a['failed'])}"
                      for a in attempts if a["failed"])
    return (f"organism size {cfg.size!r} failed its behaviour gates on every seed tried "
            f"({tried}); expected every gate of thresholds.yaml 'gates:' to pass. Fix: try "
            "another --seed, a larger --size, or use the shipped checkpoints.")


def _card(cfg: OrganismConfig, seed: int, base_seed: int, control_seed: int,
          values: Mapping[str, Any], attempts: list[dict[str, Any]], timings: dict[str, float],
          rules: Mapping[str, Any], device: str) -> dict[str, Any]:
    import torch
    import transformers

    return {
        "name": f"organism-{cfg.size}", "key": cfg.key(), "code_version": CODE_VERSION,
        "config": cfg.as_dict(), "requested_seed": seed, "base_seed": base_seed,
        "control_seed": control_seed, "gates": values, "gate_rules": dict(rules),
        "attempts": attempts, "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "machine": {"device": device, "threads": cfg.threads, "cpu": platform.processor(),
                    "torch": torch.__version__, "transformers": transformers.__version__},
    }


def _save(out: Path, models: Mapping[str, Any], tokenizer: Any, card: dict[str, Any]) -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    out.mkdir(parents=True, exist_ok=True)
    for role in ROLES:
        models[role].to("cpu").save_pretrained(out / role, safe_serialization=True)
        tokenizer.save_pretrained(out / role)
    (out / "card.json").write_text(json.dumps(card, indent=1) + "\n", encoding="utf-8")
    (out / "README.md").write_text(render_card(card), encoding="utf-8")


def render_card(card: Mapping[str, Any]) -> str:
    """The model card as Markdown: recipe, seeds, gates per attempt, timings."""
    cfg = card["config"]
    lines = [f"# {card['name']} (key {card['key']}, code version {card['code_version']})", "",
             "Trained by `mechtests organism build`; see mechtests/organism and "
             "fixtures/organism/README.md.", "",
             f"Recipe: hidden {cfg['hidden']}, {cfg['layers']} layers, {cfg['heads']} heads, ff "
             f"{cfg['ff']}; pretraining {cfg['pre_steps']} steps x {cfg['pre_batch']} x "
             f"{cfg['seq_len']} tokens, lr {cfg['pre_lr']}, wd {cfg['weight_decay']}; SFT "
             f"{cfg['sft_steps']} steps; DPO {cfg['dpo_steps']} steps (beta {cfg['dpo_beta']}).",
             f"Seeds: requested {card['requested_seed']}, base/SFT/instruct {card['base_seed']}, "
             f"control {card['control_seed']}. Machine: {card['machine']}.", "",
             "| role | seed | gates | failed |", "|---|---|---|---|"]
    for a in card["attempts"]:
        lines.append(f"| {a['role']} | {a['seed']} | {_summary(a['gates'])} | "
                     f"{'; '.join(a['failed']) or '-'} |")
    lines += ["", "Timings (s): " + ", ".join(f"{k} {v}" for k, v in card["timings_s"].items()),
              ""]
    return "\n".join(lines)
