"""Where a checkpoint's model card is: ``card.json`` beside its weights or in the folder that
holds a family's checkpoints (the organism's ``fixtures/organism/checkpoints/ci/``). The report
reads and prints the cards (:mod:`mechtests.report.cards`); this module only finds them."""

from __future__ import annotations

from pathlib import Path

__all__ = ["CARD_NAME", "find_card"]

CARD_NAME = "card.json"


def find_card(checkpoint_dir: Path) -> Path | None:
    """``card.json`` in the checkpoint directory or its parent, if any."""
    for folder in (checkpoint_dir, checkpoint_dir.parent):
        if (folder / CARD_NAME).is_file():
            return folder / CARD_NAME
    return None
