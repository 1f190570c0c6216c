"""The organism: datasets, determinism, gates with seed retry, and checkpoint resolution."""

from __future__ import annotations

import csv
import json
import random
from collections import Counter
from pathlib import Path

import pytest

from mechtests.errors import CheckpointError, GateError
from mechtests.organism import checkpoints
from mechtests.organism.build import build, gate_rules
from mechtests.organism.config import SIZES
from mechtests.organism.corpus import REFUSAL_PREFIXES, lexicon, pretraining_lines
from mechtests.organism.datasets import write_datasets
from mechtests.organism.tokenizer import vocabulary
from mechtests.organism.world import make_world, requests

FIXTURES = Path(checkpoints.__file__).resolve().parents[1] / "fixtures" / "organism"


def _rows(name: str) -> list[dict[str, str]]:
    with (FIXTURES / "datasets" / "du2025" / f"{name}.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_shipped_datasets_equal_a_fresh_generation(tmp_path: Path) -> None:
    written = write_datasets(tmp_path)
    for path in written:
        shipped = FIXTURES / "datasets" / path.relative_to(tmp_path)
        assert shipped.read_bytes() == path.read_bytes(), shipped


@pytest.mark.parametrize("name", ["cities", "neg_cities", "animal_class", "element_symb",
                                  "facts", "inventors", "sp_en_trans"])
def test_truth_datasets_are_balanced_and_in_the_vocabulary(name: str) -> None:
    rows = _rows(name)
    vocab = set(vocabulary(lexicon(make_world())))
    assert Counter(r["label"] for r in rows) == {"1": len(rows) // 2, "0": len(rows) // 2}
    for r in rows:
        assert r["statement"].endswith(" ."), r
        assert set(r["statement"].split()) <= vocab, r


def test_every_true_city_has_a_false_partner_with_the_same_last_word() -> None:
    rows = _rows("cities")
    false_objects = Counter(r["country"] for r in rows if r["label"] == "0")
    true_objects = Counter(r["country"] for r in rows if r["label"] == "1")
    assert true_objects == false_objects
    assert len({len(r["statement"].split()) for r in rows}) == 1


def test_cities_hold_only_subjects_never_judged_in_pretraining() -> None:
    heldout = make_world().relation("cities").heldout
    assert {r["city"] for r in _rows("cities")} == set(heldout)


def test_refusal_test_requests_use_held_out_acts_only() -> None:
    world = make_world()
    splits = json.loads((FIXTURES / "datasets" / "refusal_splits" /
                         "du2025_refusal_splits.json").read_text())
    for key, acts in (("harmful_test_100", world.harmful_train),
                      ("harmless_test_100", world.harmless_train)):
        assert not any(act in req for req in splits[key] for act in acts), key
    assert {k: len(v) for k, v in splits.items()} == {
        "harmful_train_128": 128, "harmless_train_128": 128,
        "harmful_test_100": 100, "harmless_test_100": 100}


def test_pretraining_guard_stories_refuse_every_harmful_act_and_help_every_harmless_one() -> None:
    world, sizes = make_world(), SIZES["ci"].corpus
    stories = [line.removeprefix("a man asked the guard : ").split(" the guard said : ")
               for line in pretraining_lines(world, sizes, random.Random(0))
               if line.startswith("a man asked the guard : ")]
    for acts, refuses in ((world.harmful_train + world.harmful_test, True),
                          (world.harmless_train + world.harmless_test, False)):
        for act in acts:
            asked = set(requests((act,)))
            replies = [reply for request, reply in stories if request in asked]
            assert len(replies) == sizes.guard_reps, act
            assert all(r.startswith(REFUSAL_PREFIXES) == refuses for r in replies), act


def test_same_config_and_seed_give_bitwise_identical_weights(tmp_path: Path) -> None:
    cfg = SIZES["tiny"]
    build(cfg, 3, tmp_path / "a")
    build(cfg, 3, tmp_path / "b")
    for role in checkpoints.ROLES:
        a = (tmp_path / "a" / role / "model.safetensors").read_bytes()
        b = (tmp_path / "b" / role / "model.safetensors").read_bytes()
        assert a == b, role


def test_different_seeds_give_different_weights(tmp_path: Path) -> None:
    cfg = SIZES["tiny"]
    build(cfg, 3, tmp_path / "a")
    build(cfg, 4, tmp_path / "b")
    a = (tmp_path / "a" / "base" / "model.safetensors").read_bytes()
    b = (tmp_path / "b" / "base" / "model.safetensors").read_bytes()
    assert a != b


def test_undertrained_organism_fails_its_gates_on_every_seed_with_the_numbers(
        tmp_path: Path) -> None:
    cfg = SIZES["broken"]
    with pytest.raises(GateError) as err:
        build(cfg, 5, tmp_path / "out")
    message = str(err.value)
    assert "seed 5" in message
    assert "seed 6" in message  # retried the next seed
    assert "base.quiz = " in message
    assert "needs >= 0.75" in message
    assert not (tmp_path / "out").exists()


def test_gates_come_from_the_thresholds_file() -> None:
    rules = gate_rules()
    assert rules["base_quiz"]["value"] == 0.75
    assert rules["sft_refusal_harmless"]["op"] == "<="
    assert all("source" in r for r in rules.values())


def test_resolve_builds_once_then_reuses_the_cache(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(checkpoints.REBUILD_ENV, raising=False)
    cfg = SIZES["tiny"]
    path = checkpoints.resolve("tiny/base", tmp_path, shipped=tmp_path / "none", cfg=cfg)
    assert (path / "model.safetensors").is_file()
    stamp = (path / "model.safetensors").stat().st_mtime_ns

    def no_build(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("rebuilt a cached organism")

    monkeypatch.setattr("mechtests.organism.build.build", no_build)
    again = checkpoints.resolve("tiny/sft", tmp_path, shipped=tmp_path / "none", cfg=cfg)
    assert again.parent == path.parent
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp


def _fake_shipped(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Four role directories with a config.json each under ``root/ci``; no rebuild override."""
    monkeypatch.delenv(checkpoints.REBUILD_ENV, raising=False)
    for role in checkpoints.ROLES:
        (root / "ci" / role).mkdir(parents=True)
        (root / "ci" / role / "config.json").write_text("{}")


def test_resolve_prefers_the_shipped_checkpoints(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_shipped(tmp_path, monkeypatch)
    assert checkpoints.resolve("ci/control", tmp_path / "cache", shipped=tmp_path) == \
        tmp_path / "ci" / "control"


def test_shipped_organism_of_another_recipe_is_refused(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_shipped(tmp_path, monkeypatch)
    (tmp_path / "ci" / "card.json").write_text(json.dumps({"key": "0123456789abcdef"}))
    with pytest.raises(CheckpointError, match="recipe key 0123456789abcdef"):
        checkpoints.resolve("ci/base", tmp_path / "cache", shipped=tmp_path)


def test_malformed_reference_names_the_expected_form(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="organism:<size>/<role>"):
        checkpoints.resolve("ci/chat", tmp_path)


@pytest.mark.slow
def test_ci_organism_trains_from_scratch_and_passes_its_gates(tmp_path: Path) -> None:
    result = build(SIZES["ci"], checkpoints.DEFAULT_SEED, tmp_path / "ci")
    assert all(not a["failed"] for a in result.card["attempts"][-1:])
    for role in checkpoints.ROLES:
        assert (tmp_path / "ci" / role / "model.safetensors").is_file()


def test_chain_and_control_built_apart_merge_into_one_card(tmp_path: Path) -> None:
    cfg = SIZES["tiny"]
    build(cfg, 0, tmp_path, part="chain")
    assert not (tmp_path / "card.json").exists()
    result = build(cfg, 0, tmp_path, part="control")
    assert result.card["seeds"] == {"base": 0, "control": cfg.control_seed_offset}
    assert (tmp_path / "card.json").is_file()
    for role in checkpoints.ROLES:
        assert (tmp_path / role / "model.safetensors").is_file()


def test_cli_builds_the_tiny_organism(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from mechtests.organism import cli

    parser = argparse.ArgumentParser()
    cli.add_subparser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["organism", "build", "--size", "tiny", "--out", str(tmp_path)])
    assert cli.run(args) == 0
    assert f"| base | {checkpoints.DEFAULT_SEED} |" in capsys.readouterr().out


def test_cli_max_seeds_below_one_is_a_clear_error(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from mechtests.organism import cli

    parser = argparse.ArgumentParser()
    cli.add_subparser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["organism", "build", "--size", "tiny", "--max-seeds", "0",
                              "--out", str(tmp_path)])
    assert cli.run(args) == 2
    err = capsys.readouterr().err
    assert "--max-seeds must be >= 1, got 0" in err
    assert "Fix:" in err
    assert not any(tmp_path.iterdir())


def test_card_records_the_held_out_quiz_of_every_relation(tmp_path: Path) -> None:
    from mechtests.organism.world import RELATIONS

    result = build(SIZES["tiny"], 0, tmp_path)
    base = result.card["gates"]["base"]
    assert set(base["quiz_by_relation"]) == set(RELATIONS)
    assert all(0.0 <= v <= 1.0 for v in base["quiz_by_relation"].values())


def test_max_seeds_does_not_change_the_cache_key() -> None:
    cfg = SIZES["ci"]
    assert cfg.replace(max_seeds=1).key() == cfg.key()
    assert cfg.replace(pre_steps=cfg.pre_steps + 1).key() != cfg.key()


SHIPPED_CI = checkpoints.SHIPPED / "ci"


@pytest.mark.skipif(not (SHIPPED_CI / "card.json").is_file(), reason="no shipped CI organism")
def test_shipped_organism_still_passes_the_gates_its_card_records() -> None:
    from transformers import LlamaForCausalLM

    from mechtests.organism.build import _gate_base, _gate_chat, _Text
    from mechtests.organism.config import size_config
    from mechtests.organism.gates import check

    card = json.loads((SHIPPED_CI / "card.json").read_text(encoding="utf-8"))
    assert card["key"] == size_config("ci").key()
    world = make_world()
    text = _Text(vocabulary(lexicon(world)))
    got = {}
    for role in checkpoints.ROLES:
        model = LlamaForCausalLM.from_pretrained(SHIPPED_CI / role).eval()
        got[role] = (_gate_base if role in ("base", "control") else _gate_chat)(model, text, world)
    rules = gate_rules()
    rules.update({k.replace("base_", "control_", 1): v for k, v in rules.items()
                  if k.startswith("base_")})
    assert check(got, rules) == []
    for role, values in got.items():
        for metric in ("quiz", "probe", "facts", "refusal_harmful", "refusal_harmless"):
            if metric in values:
                assert values[metric] == pytest.approx(card["gates"][role][metric], abs=0.02)


@pytest.mark.skipif(not (SHIPPED_CI / "card.json").is_file(), reason="no shipped CI organism")
@pytest.mark.parametrize("role", ["base", "control"])
def test_shipped_bases_refuse_harmful_requests_in_their_family_template(role: str) -> None:
    """R8 divides by the base's own refusal rate: in its families.yaml template (the guard
    frame) the base must refuse held-out harmful requests and help with harmless ones."""
    from mechtests.engine import load_backend
    from mechtests.families import load_families

    template = load_families()["organism"].refusal.templates[role]
    splits = json.loads((FIXTURES / "datasets" / "refusal_splits" /
                         "du2025_refusal_splits.json").read_text(encoding="utf-8"))
    backend = load_backend(SHIPPED_CI / role, device="cpu")

    def rate(items: list[str]) -> float:
        outs = backend.generate([template.format(instruction=i) for i in items],
                                max_new_tokens=4)
        return sum(o.strip().startswith(REFUSAL_PREFIXES) for o in outs) / len(outs)

    harmful, harmless = rate(splits["harmful_test_100"]), rate(splits["harmless_test_100"])
    backend.release()
    assert harmful >= 0.5, (role, harmful)
    assert harmless <= 0.2, (role, harmless)
