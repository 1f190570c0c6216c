"""Organism sizes: model shape, corpus amounts and training schedules (the recipe as data).

``ci`` starts from the recipe of the organism study (fixtures/organism/README.md) (hidden 128, 4
layers, SFT 300
steps, DPO 100 steps) with these changes, each measured in ``fixtures/organism/README.md``:
pretraining windows are 96 tokens from line starts (batch 24, about the study's tokens per
step) so the paper's 4-shot prompt lies inside the trained context; 3000 pretraining steps and
weight decay 0.2; **8 layers** instead of 4 (with 4 layers no run of 29 passed the base
gates, quiz 0.49-0.748; with 6 layers 1 of 8 draws passed; with 8 layers 4 of 8, V12 and V13);
and guard stories for every act in pretraining (V13, corpus.CorpusSizes.guard_reps). Whether a
seed passes is still chaotic in the seed, so builds gate and retry (``max_seeds``). ``gpu`` is
a larger organism for machines with an accelerator. ``tiny`` and ``broken`` exist for tests: a
seconds-long build, and a deliberately undertrained one that must fail its gates.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from mechtests.organism.corpus import CorpusSizes

CODE_VERSION = "4"
# Fields that never change the weights of a given seed (how many seeds a build may try).
NOT_IN_KEY = frozenset({"max_seeds"})


@dataclass(frozen=True)
class OrganismConfig:
    """One organism size; every field is hashed into the build key."""

    size: str
    hidden: int = 128
    layers: int = 8
    heads: int = 4
    ff: int = 512
    max_positions: int = 128
    seq_len: int = 96
    line_start_windows: bool = True  # False: windows start anywhere in the stream (the study)
    pre_steps: int = 3000
    pre_batch: int = 24
    pre_lr: float = 3e-3
    warmup: int = 50
    weight_decay: float = 0.2
    betas: tuple[float, float] = (0.9, 0.98)
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    sft_steps: int = 300
    sft_batch: int = 32
    sft_lr: float = 5e-4
    dpo_steps: int = 100
    dpo_batch: int = 16
    dpo_lr: float = 1e-4
    dpo_beta: float = 0.1
    corpus: CorpusSizes = field(default_factory=CorpusSizes)
    threads: int = 1
    max_seeds: int = 4  # the shipped ci organism is the 4th chain seed from DEFAULT_SEED
    control_seed_offset: int = 1000
    gated: bool = True  # False only for the ``tiny`` plumbing size (verdicts mean nothing)

    def key(self) -> str:
        """A short hash of the recipe and the code version (the cache directory name); fields
        in :data:`NOT_IN_KEY` are left out."""
        recipe = {k: v for k, v in self.as_dict().items() if k not in NOT_IN_KEY}
        blob = json.dumps({"config": recipe, "code": CODE_VERSION}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> OrganismConfig:
        return dataclasses.replace(self, **changes)


SIZES: dict[str, OrganismConfig] = {
    "ci": OrganismConfig(size="ci"),
    "gpu": OrganismConfig(
        size="gpu", hidden=256, layers=6, heads=8, ff=1024, pre_steps=4000, pre_batch=48,
        pre_lr=2e-3, sft_steps=500, dpo_steps=150,
    ),
    "tiny": OrganismConfig(
        size="tiny", hidden=32, layers=2, heads=2, ff=64, seq_len=32, pre_steps=6, pre_batch=4,
        sft_steps=3, sft_batch=4, dpo_steps=2, dpo_batch=2, threads=1, max_seeds=1, gated=False,
        corpus=CorpusSizes(judged_reps=1, fact_reps=1, fillers=10, quiz_blocks=10,
                           sft_examples=40, dpo_pairs=20),
    ),
    "broken": OrganismConfig(
        size="broken", hidden=32, layers=2, heads=2, ff=64, seq_len=32, pre_steps=4,
        pre_batch=4, sft_steps=2, sft_batch=4, dpo_steps=1, dpo_batch=2, threads=1,
        max_seeds=2,
        corpus=CorpusSizes(judged_reps=1, fact_reps=1, fillers=10, quiz_blocks=10,
                           sft_examples=40, dpo_pairs=20),
    ),
}


def size_config(size: str) -> OrganismConfig:
    """The config of ``size``; unknown sizes raise a one-line ConfigError."""
    from mechtests.errors import ConfigError

    if size not in SIZES:
        raise ConfigError(
            f"unknown organism size {size!r}; expected one of {', '.join(SIZES)}. "
            "Fix: use organism:ci/<role> or organism:gpu/<role>."
        )
    return SIZES[size]
