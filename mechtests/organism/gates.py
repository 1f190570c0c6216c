"""Behaviour gates of the organism, measured after training (the organism study:
fixtures/organism/README.md).

A trained organism is only a stand-in for a real family if it has the behaviour the claims
are about. Measured on *held-out* subjects and acts:

* ``quiz``: at a bare statement's final ``.``, P(correct|yes|indeed|right) > P(wrong|no|actually)
  exactly when the statement is true (held-out subjects of every relation, one false per true);
* ``probe``: mass-mean probe (paper code Knowledge+Truthfulness/probes.py:MMProbe; per-dataset
centering, direction = difference of
  class means, a 1-D logistic threshold) trained on the five training datasets and evaluated on
  the held-out ``cities`` dataset, best block output (``resid_post``) over layers;
* ``facts``: greedy completion of ``the city of X is in`` (and every relation's canonical form)
  gives the right object, held-out subjects;
* ``refusal_harmful`` / ``refusal_harmless``: share of greedy replies to held-out requests that
  start with a refusal prefix (SFT and INSTRUCT).

Thresholds live in ``thresholds.yaml`` ``gates:`` (source: the organism study).
"""

from __future__ import annotations

import csv
import random
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from mechtests.claims.model import meets
from mechtests.organism.corpus import FALSE_MARKERS, REFUSAL_PREFIXES, TRUE_MARKERS
from mechtests.organism.world import RELATIONS, World, balanced_false, requests

Encode = Callable[[str], list[int]]
TRAIN_DATASETS = ("animal_class", "element_symb", "facts", "inventors", "sp_en_trans")
HELDOUT_DATASET = "cities"


def _forward_last(model: Any, prompts: Sequence[list[int]], layers: bool = False) -> Any:
    """Last-token logits [n, vocab] (and hidden states [n, L+1, d]), batched by length."""
    out_logits = [torch.empty(0)] * len(prompts)
    out_hidden = [torch.empty(0)] * len(prompts)
    by_len: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        by_len.setdefault(len(p), []).append(i)
    with torch.no_grad():
        for idx in by_len.values():
            ids = torch.tensor([prompts[i] for i in idx], device=model.device)
            res = model(input_ids=ids, output_hidden_states=layers)
            for k, i in enumerate(idx):
                out_logits[i] = res.logits[k, -1].float().cpu()
                if layers:
                    out_hidden[i] = torch.stack([h[k, -1] for h in res.hidden_states]).float().cpu()
    logits = torch.stack(out_logits)
    return (logits, torch.stack(out_hidden)) if layers else logits


def heldout_statements(world: World, seed: int = 7) -> list[tuple[str, int, str, str]]:
    """(statement, label, relation, object) for held-out subjects, one false per true."""
    rng = random.Random(seed)
    rows = []
    for name in RELATIONS:
        rel = world.relation(name)
        pairs = [(s, rel.truth[s]) for s in rel.subjects(heldout=True)]
        wrong = balanced_false(pairs, rng)
        for s, o in pairs:
            rows.append((rel.statement(s, o), 1, name, o))
            rows.append((rel.statement(s, wrong[s]), 0, name, wrong[s]))
    return rows


def quiz_by_relation(model: Any, encode: Encode, vocab: Mapping[str, int],
                     world: World) -> dict[str, float]:
    """Per relation and over all (``"all"``): share of held-out statements whose continuation
    marker mass matches their truth."""
    rows = heldout_statements(world)
    logits = _forward_last(model, [encode(s) for s, *_ in rows])
    probs = torch.softmax(logits, -1)
    p_true = probs[:, [vocab[w] for w in TRUE_MARKERS]].sum(-1)
    p_false = probs[:, [vocab[w] for w in FALSE_MARKERS]].sum(-1)
    hit = (p_true > p_false).long() == torch.tensor([r[1] for r in rows])
    out = {"all": float(hit.float().mean())}
    for name in RELATIONS:
        mask = torch.tensor([r[2] == name for r in rows])
        out[name] = float(hit[mask].float().mean())
    return out


def fact_accuracy(model: Any, encode: Encode, world: World) -> float:
    """Greedy next word after the canonical statement minus ``<object> .``, held-out subjects."""
    prompts, targets = [], []
    for name in RELATIONS:
        rel = world.relation(name)
        for s in rel.subjects(heldout=True):
            words = rel.statement(s, rel.truth[s]).split()
            prompts.append(encode(" ".join(words[:-2])))
            targets.append(encode(words[-2])[-1])
    pred = _forward_last(model, prompts).argmax(-1)
    return float((pred == torch.tensor(targets)).float().mean())


def read_dataset(root: Path, name: str) -> tuple[list[str], list[int]]:
    with (root / "du2025" / f"{name}.csv").open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return [r["statement"] for r in rows], [int(r["label"]) for r in rows]


def period_acts(model: Any, encode: Encode, root: Path,
                names: Sequence[str]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per dataset: centered last-token block outputs [n, L, d] (paper code
    Knowledge+Truthfulness/generate_acts.py) and labels."""
    out = {}
    for name in names:
        statements, labels = read_dataset(root, name)
        _, hidden = _forward_last(model, [encode(s) for s in statements], layers=True)
        acts = hidden[:, 1:]  # drop the embeddings: index l = resid_post of block l
        out[name] = (acts - acts.mean(0, keepdim=True), torch.tensor(labels))
    return out


def _fit_threshold(scores: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """1-D logistic regression (Newton's method) on the probe score: (weight, bias)."""
    x = (scores - scores.mean()) / (scores.std() + 1e-8)
    w = torch.zeros(2, dtype=torch.float64)
    feats = torch.stack([x.double(), torch.ones_like(x, dtype=torch.float64)], 1)
    y = labels.double()
    for _ in range(25):
        p = torch.sigmoid(feats @ w)
        grad = feats.T @ (p - y)
        hess = feats.T @ (feats * (p * (1 - p) + 1e-6).unsqueeze(1)) + 1e-6 * torch.eye(2)
        w = w - torch.linalg.solve(hess, grad)
    scale = float(scores.std() + 1e-8)
    return float(w[0]) / scale, float(w[1]) - float(w[0]) * float(scores.mean()) / scale


def probe_accuracy(acts: Mapping[str, tuple[torch.Tensor, torch.Tensor]], train: Sequence[str],
                   test: str, layer: int) -> float:
    """Mass-mean probe trained on ``train`` datasets, accuracy on ``test`` at ``layer``."""
    x = torch.cat([acts[n][0][:, layer] for n in train])
    y = torch.cat([acts[n][1] for n in train])
    direction = x[y == 1].mean(0) - x[y == 0].mean(0)
    w, b = _fit_threshold(x @ direction, y)
    xt, yt = acts[test][0][:, layer], acts[test][1]
    pred = ((xt @ direction) * w + b > 0).long()
    return float((pred == yt).float().mean())


def probe_by_layer(model: Any, encode: Encode, root: Path) -> list[float]:
    """Held-out ``cities`` accuracy of the probe trained on the five training datasets."""
    acts = period_acts(model, encode, root, (*TRAIN_DATASETS, HELDOUT_DATASET))
    n_layers = acts[HELDOUT_DATASET][0].shape[1]
    return [probe_accuracy(acts, TRAIN_DATASETS, HELDOUT_DATASET, layer)
            for layer in range(n_layers)]


def greedy(model: Any, prompts: Sequence[list[int]], pad: int, steps: int = 6) -> list[list[int]]:
    """Greedy continuation of left-padded prompts (no KV cache; tiny models)."""
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=model.device)
    mask = (torch.arange(width).unsqueeze(0) >= torch.tensor(
        [width - len(p) for p in prompts]).unsqueeze(1)).long().to(model.device)
    new = []
    with torch.no_grad():
        for _ in range(steps):
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, -1]
            nxt = logits.argmax(-1, keepdim=True)
            new.append(nxt)
            ids = torch.cat([ids, nxt], 1)
            mask = torch.cat([mask, torch.ones_like(nxt)], 1)
    return torch.cat(new, 1).tolist()


def is_refusal(text: str) -> bool:
    return text.strip().startswith(REFUSAL_PREFIXES)


def refusal_rate(model: Any, encode: Encode, decode: Callable[[list[int]], str],
                 instructions: Sequence[str], pad: int) -> float:
    """Share of greedy replies to ``<user> {instruction} <assistant>`` that start a refusal."""
    prompts = [encode(f"<user> {i} <assistant>") for i in instructions]
    replies = greedy(model, prompts, pad)
    return sum(is_refusal(decode(r)) for r in replies) / len(replies)


def base_gates(model: Any, encode: Encode, vocab: Mapping[str, int], world: World,
               root: Path) -> dict[str, Any]:
    """Quiz, probe (best layer and per layer) and fact recall of a base model."""
    layers = probe_by_layer(model, encode, root)
    quiz = quiz_by_relation(model, encode, vocab, world)
    return {
        "quiz": quiz.pop("all"),
        "quiz_by_relation": quiz,
        "probe": max(layers),
        "probe_layer": int(max(range(len(layers)), key=layers.__getitem__)),
        "probe_by_layer": layers,
        "facts": fact_accuracy(model, encode, world),
    }


def chat_gates(model: Any, encode: Encode, decode: Callable[[list[int]], str],
               vocab: Mapping[str, int], world: World, pad: int) -> dict[str, Any]:
    """Refusal on held-out requests and chat TRUE/FALSE accuracy on held-out cities."""
    rows = [r for r in heldout_statements(world) if r[2] == "cities"]
    prompts = [encode(f"<user> is the statement true or false ? {s} <assistant>")
               for s, *_ in rows]
    logits = _forward_last(model, prompts)
    pred = (logits[:, vocab["TRUE"]] > logits[:, vocab["FALSE"]]).long()
    return {
        "refusal_harmful": refusal_rate(model, encode, decode, requests(world.harmful_test), pad),
        "refusal_harmless": refusal_rate(model, encode, decode, requests(world.harmless_test),
                                         pad),
        "chat_truth": float((pred == torch.tensor([r[1] for r in rows])).float().mean()),
    }


def check(values: Mapping[str, Mapping[str, Any]],
          rules: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Failed gates as ``"<role>.<metric> = v (needs op t)"``; rules keyed ``<role>_<metric>``."""
    failed = []
    for key, rule in rules.items():
        role, _, metric = key.partition("_")
        if role not in values or metric not in values[role]:
            continue
        v = float(values[role][metric])
        ok = meets(v, rule["op"], rule["value"])
        if not ok:
            failed.append(f"{role}.{metric} = {v:.3f} (needs {rule['op']} {rule['value']})")
    return failed
