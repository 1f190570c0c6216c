"""The preflight's checks of one family: checkpoints, pairs, layers, readouts, datasets.

Every check reads files only (``config.json``, safetensors headers, the tokenizer, the dataset
files): no weights are loaded and no model runs. A failed check raises
:class:`~mechtests.errors.PreflightError` with one line: what, where, expected, got, and the fix.
:mod:`mechtests.preflight.run` decides which checks a run needs.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mechtests.errors import MechTestsError, PreflightError

# Areas whose claims compare token positions or logits across models: they need one vocabulary.
VOCABULARY_AREAS = frozenset({"knowledge", "crossmodel"})
# Areas that read the truth readout strings (logit difference of readout_true / readout_false).
READOUT_AREAS = frozenset({"truth", "knowledge", "crossmodel"})
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


@dataclass
class CheckpointInfo:
    """What the preflight read from one checkpoint directory (no weights loaded)."""

    where: str  # "<family>/<role>"
    path: Path
    config: Mapping[str, Any]
    tokenizer: Any  # tokenizers.Tokenizer, or a transformers tokenizer (sentencepiece only)

    def number(self, *keys: str) -> int | None:
        for key in keys:
            if self.config.get(key) is not None:
                return int(self.config[key])
        return None

    @property
    def width(self) -> int | None:
        return self.number("hidden_size", "d_model", "n_embd")

    @property
    def depth(self) -> int | None:
        return self.number("num_hidden_layers", "n_layer", "n_layers")

    @property
    def mlp_width(self) -> int | None:
        return self.number("intermediate_size", "d_mlp", "n_inner")

    @property
    def max_positions(self) -> int | None:
        return self.number("max_position_embeddings", "n_positions", "n_ctx")

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without special tokens (the readout convention)."""
        if hasattr(self.tokenizer, "encode_batch"):  # tokenizers.Tokenizer
            return list(self.tokenizer.encode(text, add_special_tokens=False).ids)
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def vocabulary(self) -> dict[str, int]:
        """The model vocabulary without added (special) tokens."""
        if hasattr(self.tokenizer, "encode_batch"):
            return dict(self.tokenizer.get_vocab(with_added_tokens=False))
        added = set(self.tokenizer.get_added_vocab())
        return {t: i for t, i in self.tokenizer.get_vocab().items() if t not in added}


def _fail(message: str) -> PreflightError:
    return PreflightError(f"preflight: {message}")


def looks_like_path(ref: str) -> bool:
    """A reference meant as a local path (hub ids are ``owner/name``)."""
    return ref.startswith(("/", ".", "~")) or ref.count("/") > 1 or "\\" in ref


def inspect_checkpoint(where: str, ref: str, cache_dir: Path) -> CheckpointInfo | None:
    """Resolve ``ref`` and read its config, weight headers and tokenizer.

    None when the reference resolves to something that is not a directory (a single-file
    format handled by its own loader).
    """
    from mechtests.families import resolve_checkpoint

    local = Path(ref).expanduser()
    if looks_like_path(ref) and not local.exists():
        raise _fail(f"{where} checkpoint directory {local} does not exist; expected a folder with "
                    "config.json, *.safetensors and a tokenizer. Fix: correct the path (it is a "
                    "local path, so nothing is downloaded).")
    try:
        path = resolve_checkpoint(ref, cache_dir)
    except MechTestsError as exc:
        raise _fail(f"{where}: {exc}") from None
    if not path.is_dir():
        return None
    config = _read_config(where, path)
    _check_weights(where, path)
    return CheckpointInfo(where, path, config, _load_tokenizer(where, path))


def _read_config(where: str, path: Path) -> dict[str, Any]:
    try:
        raw = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise _fail(f"{where} {path / 'config.json'} does not parse ({type(exc).__name__}); "
                    "expected the JSON written by save_pretrained. Fix: restore config.json from "
                    "the model's source.") from None
    if not isinstance(raw, dict):
        raise _fail(f"{where} {path / 'config.json'} is not a JSON object. Fix: restore it.")
    nested = raw.get("text_config")
    return {**nested, **raw} if isinstance(nested, dict) else raw


def _check_weights(where: str, path: Path) -> None:
    files = sorted(path.glob("*.safetensors"))
    if not files:
        pickles = sorted(p.name for p in path.iterdir() if p.suffix in _PICKLE_SUFFIXES)
        got = f"only pickle weights {pickles}" if pickles else "no weight files"
        raise _fail(f"{where} checkpoint {path} has {got}; expected *.safetensors (pickle files "
                    "can run code and are never loaded). Fix: load it once where you trust it and "
                    "re-save with model.save_pretrained(dir, safe_serialization=True).")
    for file in files:
        try:
            with file.open("rb") as fh:
                size = int.from_bytes(fh.read(8), "little")
                header = json.loads(fh.read(size)) if 0 < size < 2**27 else None
        except (OSError, ValueError):
            header = None
        if not isinstance(header, dict):
            raise _fail(f"{where} weight file {file} has no readable safetensors header "
                        f"({file.stat().st_size} bytes); expected a complete safetensors file. "
                        "Fix: copy or download the checkpoint again.")


def _load_tokenizer(where: str, path: Path) -> Any:
    try:
        if (path / "tokenizer.json").is_file():
            from tokenizers import Tokenizer

            return Tokenizer.from_file(str(path / "tokenizer.json"))
        if (path / "tokenizer.model").is_file():
            from transformers import AutoTokenizer

            return AutoTokenizer.from_pretrained(str(path))
    except Exception as exc:
        detail = " ".join(str(exc).split())[:160]
        raise _fail(f"{where} tokenizer in {path} does not load ({type(exc).__name__}: "
                    f"{detail}). Fix: re-save it with tokenizer.save_pretrained(dir).") from None
    raise _fail(f"{where} checkpoint {path} has no tokenizer; expected tokenizer.json (or "
                "tokenizer.model). Fix: save the tokenizer the model was trained with into the "
                "folder (tokenizer.save_pretrained(dir)).")


def check_pair(base: CheckpointInfo, other: CheckpointInfo, areas: Iterable[str]) -> None:
    """``other`` can be compared with ``base`` for the claims of ``areas``."""
    areas = set(areas)
    wanted = [("width (hidden_size)", base.width, other.width),
              ("depth (num_hidden_layers)", base.depth, other.depth)]
    if "confidence" in areas:
        wanted.append(("MLP width (intermediate_size)", base.mlp_width, other.mlp_width))
    for what, expected, got in wanted:
        if expected is not None and got is not None and expected != got:
            raise _fail(f"{other.where} has {what} {got}; expected {expected} like {base.where} "
                        "(base and post-trained models are compared layer by layer). Fix: pair "
                        "it with the base it was post-trained from (--base or --families-file).")
    if not areas & VOCABULARY_AREAS:
        return
    mine, theirs = base.vocabulary(), other.vocabulary()
    if mine != theirs:
        differ = sorted(set(mine.items()) ^ set(theirs.items()))[:1]
        example = f"e.g. {differ[0][0]!r}" if differ else ""
        areas_text = ", ".join(sorted(areas & VOCABULARY_AREAS))
        raise _fail(f"{other.where} tokenizer has a vocabulary of {len(theirs)} tokens that "
                    f"differs from {base.where}'s {len(mine)} ({example}); expected one "
                    f"vocabulary for the {areas_text} claims (they compare token positions across "
                    "models). Fix: use the base the model was post-trained from, or deselect "
                    "those claims with -k 'not knowledge and not crossmodel'.")


def check_layers(family: Any, info: CheckpointInfo) -> None:
    """The family's layers exist in the model (0-based block indices)."""
    depth = info.depth
    if depth is None:
        return
    layers = {"truth.probe_layer": family.truth.probe_layer,
              "truth.intervene_layer": family.truth.intervene_layer,
              "refusal.layer": family.refusal.layer}
    for key, layer in layers.items():
        if not 0 <= layer < depth:
            raise _fail(f"family {family.name!r} {key} is {layer} but {info.where} has {depth} "
                        f"layers; expected 0..{depth - 1}. Fix: set {key} in the family's YAML "
                        "(--families-file) to a layer of the model.")
    if family.truth.intervene_layer > family.truth.probe_layer:
        raise _fail(f"family {family.name!r} truth.intervene_layer "
                    f"{family.truth.intervene_layer} is above truth.probe_layer "
                    f"{family.truth.probe_layer}; expected intervene_layer <= probe_layer (layers "
                    "intervene..probe are steered). Fix: swap or correct them.")


def check_readouts(family: Any, info: CheckpointInfo) -> None:
    """``readout_true`` and ``readout_false`` are one token each, and different."""
    ids = {}
    for key in ("readout_true", "readout_false"):
        text = getattr(family.truth, key)
        tokens = info.encode(text)
        if len(tokens) != 1:
            raise _fail(f"family {family.name!r} truth.{key} {text!r} is {len(tokens)} tokens in "
                        f"{info.where}'s tokenizer {tokens}; expected exactly 1 (the claims read "
                        "one logit). Fix: pick a readout string that is one token in every model "
                        "of the family (e.g. ' True' / ' False').")
        ids[key] = tokens[0]
    if ids["readout_true"] == ids["readout_false"]:
        raise _fail(f"family {family.name!r} readouts map to the same token {ids['readout_true']} "
                    f"in {info.where}; expected two tokens. Fix: use distinct readout strings.")


def check_templates(family: Any, roles: Iterable[str]) -> None:
    """Each refusal template has the ``{instruction}`` field."""
    for role in roles:
        template = family.refusal.templates.get(role, "")
        if "{instruction}" not in template:
            raise _fail(f"family {family.name!r} refusal.templates.{role} {template!r} has no "
                        "'{instruction}' field; expected the prompt format with the request "
                        "inside it. Fix: add {instruction} where the user's request goes.")
