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
    """The organism's rules in the ``gates:`` section of thresholds.yaml.

    Entries that are themselves sections of rules (``gates: gemma3-270m: ...``) belong to other
    families' post-training gates and are left out.
    """
    gates = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("gates") or {}
    rules = {name: rule for name, rule in gates.items() if isinstance(rule, dict) and "op" in rule}
    if not rules:
        raise ConfigError(f"{path} has no 'gates:' section. Fix: restore the organism gates.")
    return rules


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


PARTS = ("all", "chain", "control")


def build(cfg: OrganismConfig, seed: int, out: Path, *, device: str = "cpu",
          progress: bool | None = None, rules: Mapping[str, Mapping[str, Any]] | None = None,
          log: Callable[[str], None] | None = None, part: str = "all") -> BuildResult:
    """Train and gate the roles into ``out``; GateError when every seed fails.

    ``part="chain"`` trains only base/SFT/instruct, ``part="control"`` only the control base
    (two processes can build one organism in parallel into the same ``out``); each part writes
    ``card.<part>.json`` and the card is completed once both parts are there.
    """
    if part not in PARTS:
        raise ConfigError(f"unknown build part {part!r}; expected one of {', '.join(PARTS)}.")
    rules = dict(gate_rules() if rules is None and cfg.gated else rules or {})
    run = _Run(cfg, seed, device, show_progress() if progress is None else progress, rules,
               log or (lambda _msg: None))
    with train.deterministic(cfg.threads):
        if part in ("all", "chain"):
            run.chain()
        if part in ("all", "control"):
            run.control()
    run.save(out, part)
    return BuildResult(out, finish(out) if part != "all" else run.card())


class _Run:
    """One build: the trained models, their gate values, every attempt and timings."""

    def __init__(self, cfg: OrganismConfig, seed: int, device: str, progress: bool,
                 rules: dict[str, Any], say: Callable[[str], None]) -> None:
        self.cfg, self.seed, self.device, self.progress = cfg, seed, device, progress
        self.rules, self.say = rules, say
        self.world = make_world()
        if not DATASETS_DIR.is_dir():
            write_datasets(DATASETS_DIR, self.world)
        self.text = _Text(vocabulary(corpus.lexicon(self.world)))
        self.tokenizer = build_tokenizer(self.text.vocab, cfg.max_positions)
        self.attempts: list[dict[str, Any]] = []
        self.models: dict[str, Any] = {}
        self.values: dict[str, dict[str, Any]] = {}
        self.timings: dict[str, float] = {}
        self.seeds: dict[str, int] = {}

    def _record(self, role: str, s: int, got: dict[str, Any], failed: list[str]) -> None:
        self.attempts.append({"role": role, "seed": s, "gates": got, "failed": failed})
        label = "seed" if role == "base" else f"{role} seed"
        self.say(f"{label} {s}: " + _summary(got) + (f"  FAILED {failed}" if failed else "  ok"))

    def chain(self) -> None:
        """Base, SFT, instruct from seeds seed, seed+1, ... until one chain passes."""
        import random

        cfg, text, world = self.cfg, self.text, self.world
        for k in range(cfg.max_seeds):
            s = self.seed + k
            t = time.perf_counter()
            base, losses = _train_base(cfg, s, text, world, self.device, self.progress)
            self.timings[f"pretrain_seed{s}"] = time.perf_counter() - t
            got = {"base": _gate_base(base, text, world)}
            got["base"]["final_loss"] = losses[-1]
            failed = gates.check(got, _only(self.rules, "base"))
            if not failed:
                t = time.perf_counter()
                sft_model = copy.deepcopy(base)
                examples = corpus.sft_examples(world, cfg.corpus, random.Random(s + 1))
                train.sft(sft_model, [(text.encode(f"<user> {q} <assistant>"),
                                       text.body(f"{a} <eos>")) for q, a in examples],
                          text.pad, cfg, s, self.device, self.progress)
                instruct = copy.deepcopy(sft_model)
                reference = copy.deepcopy(sft_model)
                pairs = corpus.dpo_pairs(world, cfg.corpus, random.Random(s + 2))
                train.dpo(instruct, reference, [
                    (text.encode(f"<user> {q} <assistant>"), text.body(f"{c} <eos>"),
                     text.body(f"{r} <eos>")) for q, c, r in pairs],
                    text.pad, cfg, s, self.device, self.progress)
                self.timings[f"post_seed{s}"] = time.perf_counter() - t
                got["sft"] = _gate_chat(sft_model, text, world)
                got["instruct"] = _gate_chat(instruct, text, world)
                failed = gates.check(got, _only(self.rules, "sft", "instruct"))
            self._record("base", s, got, failed)
            if not failed:
                self.seeds["base"] = s
                self.models.update(base=base, sft=sft_model, instruct=instruct)
                self.values.update(got)
                return
        raise GateError(_gate_message(cfg, self.attempts))

    def control(self) -> None:
        """The control base from seeds seed+offset, +1, ... until one passes the base gates."""
        cfg = self.cfg
        rules = {k.replace("base_", "control_", 1): v
                 for k, v in _only(self.rules, "base").items()}
        for k in range(cfg.max_seeds):
            s = self.seed + cfg.control_seed_offset + k
            t = time.perf_counter()
            model, losses = _train_base(cfg, s, self.text, self.world, self.device,
                                        self.progress)
            self.timings[f"pretrain_control_seed{s}"] = time.perf_counter() - t
            got = {"control": _gate_base(model, self.text, self.world)}
            got["control"]["final_loss"] = losses[-1]
            failed = gates.check(got, rules)
            self._record("control", s, got, failed)
            if not failed:
                self.seeds["control"] = s
                self.models["control"] = model
                self.values.update(got)
                return
        raise GateError(_gate_message(cfg, self.attempts))

    def card(self) -> dict[str, Any]:
        return _card(self.cfg, self.seed, self.seeds, self.values, self.attempts,
                     self.timings, self.rules, self.device)

    def save(self, out: Path, part: str) -> None:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        out.mkdir(parents=True, exist_ok=True)
        for role, model in self.models.items():
            model.to("cpu").save_pretrained(out / role, safe_serialization=True)
            self.tokenizer.save_pretrained(out / role)
        name = "card.json" if part == "all" else f"card.{part}.json"
        (out / name).write_text(json.dumps(self.card(), indent=1) + "\n", encoding="utf-8")
        if part == "all":
            (out / "README.md").write_text(render_card(self.card()), encoding="utf-8")


def finish(out: Path) -> dict[str, Any]:
    """Merge ``card.chain.json`` and ``card.control.json`` into the card when both exist."""
    parts = [out / "card.chain.json", out / "card.control.json"]
    if not all(p.is_file() for p in parts):
        return {}
    chain, control = (json.loads(p.read_text(encoding="utf-8")) for p in parts)
    card = dict(chain)
    card["seeds"] = {**chain["seeds"], **control["seeds"]}
    card["gates"] = {**chain["gates"], **control["gates"]}
    card["attempts"] = chain["attempts"] + control["attempts"]
    card["timings_s"] = {**chain["timings_s"], **control["timings_s"]}
    card["timings_s"]["total"] = round(sum(v for k, v in card["timings_s"].items()
                                           if k != "total"), 1)
    card["built_in_parallel"] = True
    (out / "card.json").write_text(json.dumps(card, indent=1) + "\n", encoding="utf-8")
    (out / "README.md").write_text(render_card(card), encoding="utf-8")
    return card


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


def _card(cfg: OrganismConfig, seed: int, seeds: Mapping[str, int],
          values: Mapping[str, Any], attempts: list[dict[str, Any]], timings: dict[str, float],
          rules: Mapping[str, Any], device: str) -> dict[str, Any]:
    import torch
    import transformers

    return {
        "name": f"organism-{cfg.size}", "key": cfg.key(), "code_version": CODE_VERSION,
        "config": cfg.as_dict(), "requested_seed": seed, "seeds": dict(seeds),
        "gates": values, "gate_rules": dict(rules), "attempts": attempts,
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "machine": {"device": device, "threads": cfg.threads, "cpu": platform.processor(),
                    "torch": torch.__version__, "transformers": transformers.__version__},
    }


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
             f"Seeds: requested {card['requested_seed']}, used {card['seeds']} (base, SFT and "
             f"instruct share the base seed). Machine: {card['machine']}.", "",
             "| role | seed | gates | failed |", "|---|---|---|---|"]
    for a in card["attempts"]:
        lines.append(f"| {a['role']} | {a['seed']} | {_summary(a['gates'])} | "
                     f"{'; '.join(a['failed']) or '-'} |")
    lines += ["", "Timings (s): " + ", ".join(f"{k} {v}" for k, v in card["timings_s"].items()),
              ""]
    if card.get("built_in_parallel"):
        lines += ["The chain (base/SFT/instruct) and the control were built by two processes "
                  "(`--part chain`, `--part control`); timings are per process.", ""]
    return "\n".join(lines)
