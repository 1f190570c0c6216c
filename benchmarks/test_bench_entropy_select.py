"""Entropy-neuron selection end to end on a loaded model (docs/claims.md (claim 5)). Run alone:

    pytest benchmarks/test_bench_entropy_select.py -n 0 -p no:xdist --benchmark-autosave

What the confidence area does per role (``mechtests/measures/confidence/measures.py``): copy
the readout weights out of the model (``readout_weights``: unembedding, final norm, last MLP's down
projection), compute every last-layer neuron's norm and LogitVar (``neuron_stats``, folded), and
keep the paper's ``k = 10`` lowest-LogitVar neurons among the top 25% by norm. Then the
mean-ablation entropies of the chosen set on 64 prompts (``ablation_entropies``: one clean and
one ablated forward per batch). Model: the CI organism's base when already built, else the tiny
random llama (fp32, CPU, one thread). The chunked LogitVar alone at a scaled 8B width is
``test_bench_entropy.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from bench_support import built_organism_or_tiny, cities_queries

from mechtests.methods.entropy_neurons import neuron_stats, select_entropy_neurons

pytestmark = pytest.mark.benchmark


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from mechtests.engine import load_backend
    from mechtests.families import resolve_checkpoint

    torch.set_num_threads(1)
    cache = Path(tmp_path_factory.mktemp("bench-entropy"))
    ref, label = built_organism_or_tiny(cache)
    path = resolve_checkpoint(ref, cache)
    return {"backend": load_backend(path, device="cpu", name=label), "label": label,
            "prompts": cities_queries(64), "path": path}


def _select(backend: Any) -> Any:
    weights = backend.readout_weights()
    return select_entropy_neurons(neuron_stats(weights, fold=True), k=10, norm_top=0.25)


def test_bench_entropy_neuron_selection(benchmark: Any, setup: dict[str, Any]) -> None:
    backend = setup["backend"]
    chosen = benchmark.pedantic(_select, args=(backend,), rounds=5, iterations=1)
    d_mlp = int(backend.readout_weights().mlp_out.shape[1])
    benchmark.extra_info.update(model=setup["label"], d_mlp=d_mlp,
                                neurons_per_s=d_mlp / benchmark.stats.stats.mean)
    assert len(chosen.indices) == min(10, len(chosen.pool))


def test_bench_entropy_neuron_mean_ablation(benchmark: Any, setup: dict[str, Any]) -> None:
    import json

    from mechtests.methods.confidence import FinalReadout, ablation_entropies

    backend, prompts = setup["backend"], setup["prompts"]
    config = json.loads((setup["path"] / "config.json").read_text())
    readout = FinalReadout.from_weights(backend.readout_weights(),
                                        float(config.get("rms_norm_eps", 1e-5)), None)
    chosen = list(_select(backend).indices)
    out = benchmark.pedantic(ablation_entropies, args=(backend, prompts, chosen, readout),
                             kwargs={"batch_size": 32}, rounds=3, iterations=1)
    benchmark.extra_info.update(model=setup["label"], n_prompts=len(prompts),
                                prompts_per_s=len(prompts) / benchmark.stats.stats.mean)
    assert out is not None
