"""Choose the organism family's layers and coefficients from TRAINING data only.

The paper fixes its layers by hand per model (paper code config.ini and Refusal/*.py, 5.2); the
organism needs its own.
Everything here uses training subjects and training requests, never the held-out sets the
claims are scored on:

* ``truth.probe_layer``: the block whose output (at the statement's ``.``) gives the best mean
  leave-one-dataset-out accuracy of the mass-mean probe over the five training datasets (base);
  ``truth.intervene_layer``: the earliest block within 0.05 of that accuracy (at most
  ``probe_layer - 1`` so the steering span has two layers, as the paper's 8..12).
* ``refusal.layer``, position and coefficients: the rule every family shares
  (:mod:`mechtests.measures.refusal.calibrate`, also ``mechtests calibrate``) with the organism's
  absolute coefficient grid ``COEF_GRID``. On the organism a random direction ablated at every
  layer leaves the instruct model's refusals in place, so the site is the one whose direction,
  ablated at every layer (pre/mid/post), leaves the lowest refusal on 32 training harmful
  requests (layers >= 1, positions -1 / -2; ties: the later layer); per role, the smallest grid
  coefficient whose addition of the role's own unit direction at that layer (pre/mid/post)
  makes >= 0.9 of 32 training harmless requests refused, each role in its own template from
  families.yaml (the bases in the guard-story frame, the post-trained roles in the chat
  template). ``subtraction_coef`` = the instruct coefficient.

Run: ``python -m mechtests.organism.calibrate DIR`` (DIR holds base/sft/instruct/control).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch

from mechtests.measures.refusal.calibrate import CalibrationRule
from mechtests.organism import gates
from mechtests.organism.corpus import REFUSAL_PREFIXES
from mechtests.organism.gates import TRAIN_DATASETS

DATASETS = Path(__file__).resolve().parents[1] / "fixtures" / "organism" / "datasets"
COEF_GRID = (1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0)
N_EVAL = 32
KINDS = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post")
ORGANISM_RULE = CalibrationRule(coef_grid=COEF_GRID, relative_grid=False, positions=(-1, -2),
                                n_eval=N_EVAL, max_new_tokens=4, target_rate=0.9)


def truth_layers(path: Path) -> dict[str, Any]:
    """Leave-one-dataset-out probe accuracy per block on the training datasets (base)."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    acts = gates.period_acts(model, lambda s: tok(s).input_ids, DATASETS, TRAIN_DATASETS)
    n_layers = next(iter(acts.values()))[0].shape[1]
    loo = []
    for layer in range(n_layers):
        accs = [gates.probe_accuracy(acts, [d for d in TRAIN_DATASETS if d != test], test, layer)
                for test in TRAIN_DATASETS]
        loo.append(sum(accs) / len(accs))
    probe = max(range(n_layers), key=lambda i: (loo[i], i))
    close = [i for i in range(n_layers) if loo[i] >= loo[probe] - 0.05 and i < probe]
    intervene = min(close) if close else max(0, probe - 1)
    return {"loo_by_layer": loo, "probe_layer": probe, "intervene_layer": intervene}


def _splits() -> dict[str, list[str]]:
    data = json.loads((DATASETS / "refusal_splits" / "du2025_refusal_splits.json").read_text())
    return {k: list(v) for k, v in data.items()}


def _templates() -> dict[str, str]:
    """Each role's refusal template from the organism family data (families.yaml)."""
    from mechtests.families import load_families

    return dict(load_families()["organism"].refusal.templates)


def _prompts(items: list[str], template: str) -> list[str]:
    return [template.format(instruction=i) for i in items]


def _direction(backend: Any, layer: int, pos: int, harmful: list[str],
               harmless: list[str], template: str) -> torch.Tensor:
    site = f"blocks.{layer}.hook_resid_pre"
    a = backend.cache(backend.tokenize(_prompts(harmful, template)), [site], [pos])[site][:, 0]
    b = backend.cache(backend.tokenize(_prompts(harmless, template)), [site], [pos])[site][:, 0]
    return a.mean(0) - b.mean(0)


def _rate(backend: Any, prompts: list[str], hooks: list[Any]) -> float:
    outs = backend.generate(prompts, max_new_tokens=4, hooks=hooks)
    return sum(_is_refusal(o) for o in outs) / len(outs)


def _is_refusal(text: str) -> bool:
    return text.strip().startswith(REFUSAL_PREFIXES)


def refusal_site(root: Path) -> dict[str, Any]:
    """The shared refusal rule (:func:`mechtests.measures.refusal.calibrate.calibrate_refusal`)
    with the organism's absolute grid, on the checkpoints under ``root``."""
    from mechtests.engine import load_backend
    from mechtests.measures.refusal.calibrate import TrainingRequests, calibrate_refusal

    sp = _splits()
    data = TrainingRequests(tuple(sp["harmful_train_128"]), tuple(sp["harmless_train_128"]),
                            _templates())
    loaded: dict[str, Any] = {}

    def load(role: str) -> Any:
        if role not in loaded:
            for backend in loaded.values():
                backend.release()
            loaded.clear()
            loaded[role] = load_backend(root / role, device="cpu")
        return loaded[role]

    try:
        result = calibrate_refusal(load, ("instruct", "sft", "base", "control"), "instruct", data,
                                   ORGANISM_RULE, KINDS, _is_refusal)
    finally:
        for backend in loaded.values():
            backend.release()
    result["heldout_report"] = _heldout(root, result["layer"], result["position"],
                                        result["addition_coefs"]["instruct"])
    return result


def _heldout(root: Path, layer: int, pos: int, coef: float) -> dict[str, float]:
    """Report only (not used for any choice): the instruct model's own direction on the test
    requests: refusal without / with ablation (harmful), without / with addition (harmless)."""
    from mechtests.engine import load_backend
    from mechtests.methods.interventions import ablation_hooks, addition_hooks

    sp = _splits()
    inst = load_backend(root / "instruct", device="cpu")
    chat = _templates()["instruct"]
    r = _direction(inst, layer, pos, sp["harmful_train_128"], sp["harmless_train_128"], chat)
    harmful = _prompts(sp["harmful_test_100"], chat)
    harmless = _prompts(sp["harmless_test_100"], chat)
    out = {
        "harmful": _rate(inst, harmful, []),
        "harmful_ablated": _rate(inst, harmful, ablation_hooks(r, inst.n_layers, KINDS)),
        "harmless": _rate(inst, harmless, []),
        "harmless_added": _rate(inst, harmless, addition_hooks(r, layer, coef, KINDS)),
    }
    inst.release()
    return out


def main(argv: list[str]) -> int:
    torch.set_num_threads(1)
    root = Path(argv[0])
    result = {"truth": truth_layers(root / "base"), "refusal": refusal_site(root)}
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
