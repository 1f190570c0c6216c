"""Bad checkpoints and pairs: one line with the fix, before any model loads."""

from __future__ import annotations

import json
from pathlib import Path

from tests.bad_inputs.conftest import Case, assert_config_error, assert_no_report


def _edit_config(path: Path, **values: object) -> None:
    config = json.loads((path / "config.json").read_text())
    config.update(values)
    (path / "config.json").write_text(json.dumps(config))


def test_a_local_path_that_does_not_exist_is_not_told_to_download(case: Case) -> None:
    missing = case.pytester.path / "models" / "nope"
    line = assert_config_error(case.run("--base", str(missing)), "does not exist",
                               "correct the path")
    assert "huggingface-cli" not in line
    assert_no_report(case.reports)


def test_a_hub_id_not_in_the_local_cache_names_the_download_command(case: Case) -> None:
    assert_config_error(case.run("--instruct", "no-such-org/no-such-model"),
                        "tiny/instruct", "local HuggingFace cache", "huggingface-cli download")


def test_a_folder_without_config_json_is_refused(case: Case) -> None:
    ckpt = case.checkpoint()
    (ckpt / "config.json").unlink()
    assert_config_error(case.run("--base", str(ckpt)), "no config.json")


def test_a_config_json_that_does_not_parse_is_refused(case: Case) -> None:
    ckpt = case.checkpoint()
    (ckpt / "config.json").write_text("{not json")
    assert_config_error(case.run("--base", str(ckpt)), "tiny/base", "does not parse")


def test_a_checkpoint_without_a_tokenizer_is_refused_before_transformers_fails(case: Case) -> None:
    ckpt = case.checkpoint("sft")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (ckpt / name).unlink()
    assert_config_error(case.run("--sft", str(ckpt)), "tiny/sft", "has no tokenizer",
                        "save_pretrained")


def test_a_corrupted_tokenizer_is_refused(case: Case) -> None:
    ckpt = case.checkpoint("sft")
    (ckpt / "tokenizer.json").write_text('{"version": ')
    assert_config_error(case.run("--sft", str(ckpt)), "tokenizer", "does not load")


def test_pickle_only_weights_are_refused(case: Case) -> None:
    ckpt = case.checkpoint()
    (ckpt / "model.safetensors").rename(ckpt / "pytorch_model.bin")
    assert_config_error(case.run("--base", str(ckpt)), "pickle", "safe_serialization=True")


def test_a_zero_byte_safetensors_file_is_refused(case: Case) -> None:
    ckpt = case.checkpoint()
    (ckpt / "model.safetensors").write_bytes(b"")
    assert_config_error(case.run("--base", str(ckpt)), "no readable safetensors header")


def test_a_post_model_of_another_width_is_refused_naming_both_models(case: Case) -> None:
    ckpt = case.checkpoint("sft")
    _edit_config(ckpt, hidden_size=96)
    assert_config_error(case.run("--sft", str(ckpt)), "tiny/sft has width (hidden_size) 96",
                        "expected 64 like tiny/base")


def test_a_post_model_of_another_depth_is_refused(case: Case) -> None:
    ckpt = case.checkpoint("instruct")
    _edit_config(ckpt, num_hidden_layers=3)
    assert_config_error(case.run("--instruct", str(ckpt)), "depth (num_hidden_layers) 3")


def test_a_post_model_of_another_mlp_width_is_refused_for_entropy_neurons(case: Case) -> None:
    ckpt = case.checkpoint("sft")
    _edit_config(ckpt, intermediate_size=256)
    assert_config_error(case.run("--sft", str(ckpt), "-k", "confidence"), "MLP width")


def test_a_post_model_with_another_vocabulary_is_refused_for_cross_model_claims(
    case: Case,
) -> None:
    ckpt = case.checkpoint("sft")
    tok = json.loads((ckpt / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    word = next(w for w in vocab if w.isalpha() and w not in ("TRUE", "FALSE"))
    vocab[word + "x"] = vocab.pop(word)
    (ckpt / "tokenizer.json").write_text(json.dumps(tok))
    assert_config_error(case.run("--sft", str(ckpt)), "vocabulary", "differs from tiny/base",
                        "knowledge")


def test_another_vocabulary_is_accepted_when_no_claim_compares_tokens(case: Case) -> None:
    from types import SimpleNamespace

    from mechtests.families import load_families
    from mechtests.preflight import check_family

    ckpt = case.checkpoint("sft")
    tok = json.loads((ckpt / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    vocab["zzz"] = vocab.pop("statement")
    (ckpt / "tokenizer.json").write_text(json.dumps(tok))
    family = load_families()["tiny"].with_checkpoint("sft", str(ckpt))
    state = SimpleNamespace(cache_dir=case.cache, datasets_dir=None)
    check_family(family, {"truth", "refusal"}, {"base", "sft"}, state)  # no error


def test_full_trace_adds_the_traceback_to_the_one_line(case: Case) -> None:
    result = case.run("--base", str(case.pytester.path / "missing" / "x"), "--full-trace")
    assert result.ret == 4
    err = result.stderr.str()
    assert "Traceback" in err
    assert "PreflightError: preflight:" in err
