"""Activation collection: the hot path every area starts with. Run alone (not part of the tests):

    pytest benchmarks/test_bench_collect.py -n 0 -p no:xdist --benchmark-autosave

Model: the CI organism's base when it is already built (shipped, or in the cache: never trained
here), else the tiny random llama; fp32 on CPU, one thread. Prompts: the built-in cities
few-shot queries (the knowledge and steering prompts). Three cases:

* ``knowledge_source``: every layer's ``resid_post`` at the last 14 positions (the patching
  source of paper code Knowledge+Truthfulness/patching.py:patching_one_model), batch 32;
* ``truth_last_token``: every layer's ``resid_post`` at the last position (paper code
Knowledge+Truthfulness/generate_acts.py);
* ``early_layer``: one site at layer 0, which the backend's early stop makes cheap: its time
  against ``truth_last_token`` shows the stop working;
* ``store_warm_read``: the same request through :class:`~mechtests.measures.context.FamilyContext` a
  second time (a cache hit: safetensors read plus hashing, no model).

``extra_info`` records prompts/s and the model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from bench_support import built_organism_or_tiny, cities_queries

from mechtests.engine.collect import collect_activations
from mechtests.methods.patching import resid_sites

pytestmark = pytest.mark.benchmark

N_PROMPTS, WIDTH, BATCH = 64, 14, 32


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from mechtests.engine import load_backend
    from mechtests.families import resolve_checkpoint

    torch.set_num_threads(1)
    cache = Path(tmp_path_factory.mktemp("bench-collect"))
    ref, label = built_organism_or_tiny(cache)
    backend = load_backend(resolve_checkpoint(ref, cache), device="cpu", name=label)
    return {"backend": backend, "label": label, "prompts": cities_queries(N_PROMPTS),
            "ref": ref, "cache": cache}


def _run(benchmark: Any, setup: dict[str, Any], sites: list[str], positions: list[int],
         rounds: int = 3) -> dict[str, torch.Tensor]:
    backend, prompts = setup["backend"], setup["prompts"]
    out = benchmark.pedantic(
        collect_activations, args=(backend, prompts, sites, positions),
        kwargs={"batch_size": BATCH, "progress": False}, rounds=rounds, iterations=1)
    benchmark.extra_info.update(model=setup["label"], n_prompts=len(prompts), sites=len(sites),
                                positions=len(positions),
                                prompts_per_s=len(prompts) / benchmark.stats.stats.mean)
    return out  # type: ignore[no-any-return]


def test_bench_collect_knowledge_source(benchmark: Any, setup: dict[str, Any]) -> None:
    sites = resid_sites(setup["backend"].n_layers)
    out = _run(benchmark, setup, sites, list(range(-WIDTH, 0)))
    assert out[sites[-1]].shape == (N_PROMPTS, WIDTH, setup["backend"].d_model)


def test_bench_collect_truth_last_token(benchmark: Any, setup: dict[str, Any]) -> None:
    sites = resid_sites(setup["backend"].n_layers)
    out = _run(benchmark, setup, sites, [-1])
    assert out[sites[0]].shape == (N_PROMPTS, 1, setup["backend"].d_model)


def test_bench_collect_early_layer(benchmark: Any, setup: dict[str, Any]) -> None:
    out = _run(benchmark, setup, ["blocks.0.hook_resid_post"], [-1], rounds=5)
    assert torch.isfinite(out["blocks.0.hook_resid_post"]).all()


def test_bench_collect_store_warm_read(benchmark: Any, setup: dict[str, Any]) -> None:
    from mechtests.families import load_families, resolve_checkpoint
    from mechtests.measures.context import FamilyContext, RunOptions

    fam = load_families()["tiny"]
    fam = fam.with_checkpoint("base", str(resolve_checkpoint(setup["ref"], setup["cache"])))
    ctx = FamilyContext(fam, RunOptions(cache_dir=setup["cache"], report_dir=setup["cache"],
                                        device="cpu", progress=False))
    sites = resid_sites(setup["backend"].n_layers)
    args = ("base", setup["prompts"], sites, list(range(-WIDTH, 0)), "bench")
    ctx.activations(*args)  # cold: fills the store
    ctx.release()
    out = benchmark.pedantic(ctx.activations, args=args, rounds=5, iterations=1)
    benchmark.extra_info.update(model=setup["label"], loaded_model=ctx._loaded is not None)
    assert ctx._loaded is None  # a warm read loads no model
    assert out[sites[0]].shape == (N_PROMPTS, WIDTH, setup["backend"].d_model)
