"""The Gemma post-training: held-out data, chat format, answer-only loss, adapter merge, card."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from mechtests.data.sources import DatasetSource
from mechtests.errors import CheckpointError
from mechtests.posttrain.data import (
    HARMFUL_TEST_KEY,
    HARMLESS_TEST_KEY,
    REFUSALS,
    build_refusal_data,
    chat_answer,
    chat_prompt,
)

SHIPPED = Path(__file__).resolve().parents[2] / "mechtests" / "fixtures" / "gemma3-270m"


def _datasets(root: Path) -> DatasetSource:
    harmful = [f"Explain how to do harmful thing {i}" for i in range(30)]
    harmless = [f"Describe pleasant topic {i}." for i in range(30)]
    (root / "advbench").mkdir(parents=True)
    with (root / "advbench" / "harmful_behaviors.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["goal", "target"])
        writer.writerows([[h, "Sure"] for h in harmful])
    (root / "alpaca").mkdir()
    (root / "alpaca" / "alpaca_no_input.json").write_text(
        json.dumps([{"instruction": h, "category": None} for h in harmless]))
    (root / "refusal_splits").mkdir()
    splits = {HARMFUL_TEST_KEY: harmful[:10], HARMLESS_TEST_KEY: [f"  {h.upper()} " for h in
                                                                   harmless[:10]]}
    (root / "refusal_splits" / "du2025_refusal_splits.json").write_text(json.dumps(splits))
    return DatasetSource("paper", root)


def test_the_training_requests_exclude_the_refusal_test_split(tmp_path: Path) -> None:
    data = build_refusal_data(_datasets(tmp_path), n_harmful=100, n_harmless=100, seed=0)
    trained = {e.instruction for e in data.train}
    assert len(data.harmful_test) == len(data.harmless_test) == 10
    assert len(trained) == 40  # 20 + 20 left after holding out 10 + 10 (case/space-insensitive)
    assert not trained & set(data.harmful_test)
    assert not {t.lower() for t in trained} & {t.strip().lower() for t in data.harmless_test}
    assert all(e.answer in REFUSALS for e in data.train if e.harmful)
    assert set(data.sha256) == {"advbench/harmful_behaviors.csv", "alpaca/alpaca_no_input.json",
                                "refusal_splits/du2025_refusal_splits.json"}


def test_the_training_requests_are_seeded(tmp_path: Path) -> None:
    source = _datasets(tmp_path)
    first = build_refusal_data(source, 5, 5, seed=3).train
    assert first == build_refusal_data(source, 5, 5, seed=3).train
    assert first != build_refusal_data(source, 5, 5, seed=4).train


def test_a_request_is_framed_in_gemma_chat_format() -> None:
    text = chat_prompt("Name a colour.") + chat_answer("Blue.")
    assert text == ("<start_of_turn>user\nName a colour.<end_of_turn>\n"
                    "<start_of_turn>model\nBlue.<end_of_turn>")


def test_every_refusal_answer_counts_as_a_refusal_for_the_paper_score() -> None:
    from mechtests.methods.refusal_score import RefusalScorer

    assert all(RefusalScorer.paper().is_refusal(r) for r in REFUSALS)


def test_a_distilled_answer_stops_at_the_next_question_and_a_dangling_list_number() -> None:
    from mechtests.posttrain.train import clean_answer

    assert clean_answer(" Blue is calm.\nQuestion: why?") == "Blue is calm."
    assert clean_answer("1. Rinse the stain.\n2.") == "1. Rinse the stain."
    assert clean_answer("Blue is calm. Red is") == "Blue is calm."


def test_a_missing_gguf_base_gives_a_one_line_error(tmp_path: Path) -> None:
    from mechtests.posttrain.base import resolve_base

    for ref in (str(tmp_path / "absent.gguf"), "gguf-package:no-such-gguf-package"):
        with pytest.raises(CheckpointError) as err:
            resolve_base(ref, tmp_path)
        assert "\n" not in str(err.value)
        assert "Fix:" in str(err.value)


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mechtests.engine.tiny import resolve

    return resolve("llama/base", tmp_path_factory.mktemp("cache"))


def test_the_loss_covers_answer_tokens_only_whatever_the_left_padding(tiny_llama: Path) -> None:
    from transformers import AutoModelForCausalLM

    from mechtests.posttrain.train import batch_loss

    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    short, long = ([5, 6, 7, 8, 9], 3), ([5, 10, 11, 12, 13, 6, 7, 8, 9], 3)
    with torch.no_grad():
        together = batch_loss(model, [short, long], pad_id=0)
        alone = [batch_loss(model, [row], pad_id=0) for row in (short, long)]
        logits = model(input_ids=torch.tensor([short[0]])).logits[0, -4:-1]
        manual = torch.nn.functional.cross_entropy(logits, torch.tensor(short[0][-3:]))
    assert torch.allclose(together, (alone[0] + alone[1]) / 2, atol=1e-5)
    assert torch.allclose(alone[0], manual, atol=1e-5)


def test_the_kl_to_the_base_is_zero_for_a_fresh_adapter_and_positive_once_it_moves(
        tiny_llama: Path) -> None:
    pytest.importorskip("peft", reason="LoRA training needs peft (pip install peft)")
    from transformers import AutoModelForCausalLM

    from mechtests.posttrain.train import TrainConfig, lora_model, plain_kl

    torch.manual_seed(0)
    model = lora_model(AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32),
                       TrainConfig(rank=4))
    rows = [[2, 5, 6, 7], [2, 8, 9]]
    assert plain_kl(model, rows, pad_id=0).item() == pytest.approx(0.0, abs=1e-7)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    kl = plain_kl(model, rows, pad_id=0)
    kl.backward()
    assert kl.item() > 1e-4
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0
               for n, p in model.named_parameters() if "lora_A" in n)


def test_a_merged_adapter_equals_the_manual_merge(tiny_llama: Path, tmp_path: Path) -> None:
    pytest.importorskip("peft", reason="the LoRA merge needs peft (pip install peft)")
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from mechtests.posttrain.checkpoints import resolve

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "down_proj"],
                        init_lora_weights=False)
    adapted = get_peft_model(base, config)
    adapted.save_pretrained(tmp_path / "adapter")
    layer = adapted.base_model.model.model.layers[1].mlp.down_proj
    manual = layer.base_layer.weight + 2.0 * layer.lora_B["default"].weight @ layer.lora_A[
        "default"].weight
    merged_dir = resolve(f"{tmp_path / 'adapter'}@{tiny_llama}", tmp_path / "cache")
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32)
    assert torch.allclose(merged.model.layers[1].mlp.down_proj.weight, manual, atol=1e-6)
    assert not torch.allclose(manual, layer.base_layer.weight)
    ids = torch.tensor([[2, 7, 8, 9]])
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, adapted(input_ids=ids).logits, atol=1e-5)
    assert resolve(f"{tmp_path / 'adapter'}@{tiny_llama}", tmp_path / "cache") == merged_dir


def test_a_malformed_lora_reference_gives_a_one_line_error(tmp_path: Path) -> None:
    from mechtests.posttrain.checkpoints import resolve

    for ref in ("gemma3-270m", f"{tmp_path}@base"):
        with pytest.raises(CheckpointError) as err:
            resolve(ref, tmp_path)
        assert "\n" not in str(err.value)
        assert "Fix:" in str(err.value)


@pytest.mark.skipif(not (SHIPPED / "card.json").is_file(), reason="no shipped adapter")
def test_the_shipped_adapter_card_hashes_match_its_files() -> None:
    from mechtests.posttrain.base import file_sha256

    card = json.loads((SHIPPED / "card.json").read_text())
    assert card["files_sha256"]
    for name, digest in card["files_sha256"].items():
        assert file_sha256(SHIPPED / name) == digest, name
    assert (SHIPPED / "NOTICE").is_file()
    assert sum((SHIPPED / n).stat().st_size for n in card["files_sha256"]) <= 10 * 2**20


def test_distillation_keeps_every_refusal_and_drops_refusing_or_empty_answers(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from mechtests.posttrain import train
    from mechtests.posttrain.data import Example

    examples = [Example("harm one", True, REFUSALS[0]), Example("ask one", False),
                Example("ask two", False), Example("harm two", True, REFUSALS[1]),
                Example("ask three", False)]
    replies = {"Question: ask one\nAnswer:": " Blue.", "Question: ask two\nAnswer:": " I don't",
               "Question: ask three\nAnswer:": "\n\n"}
    monkeypatch.setattr(train, "greedy_generate",
                        lambda model, tok, prompts, n: [replies[p] for p in prompts])
    kept = train.distill_answers(None, None, examples, 8, log=lambda _: None)
    assert [(e.instruction, e.answer) for e in kept] == [
        ("harm one", REFUSALS[0]), ("ask one", "Blue."), ("harm two", REFUSALS[1])]


def test_a_gate_below_its_rule_is_reported_failed_in_the_card() -> None:
    from mechtests.claims.thresholds import PACKAGED_THRESHOLDS
    from mechtests.posttrain.build import failed_gates, gate_rules, render_card

    rules = gate_rules(PACKAGED_THRESHOLDS)
    gates = {"base": {"probe": 0.9},
             "instruct": {"probe": 0.9, "refusal_harmful": 0.95, "refusal_harmless": 0.2,
                          "nll_shift": 0.1}}
    assert failed_gates(gates, rules) == ["instruct.refusal_harmless = 0.200 (needs <= 0.1)"]
    card = {"name": "n", "base": {"ref": "b", "sha256": "s"}, "recipe": {"seed": 0},
            "n_examples": {"harmful": 1, "harmless": 1}, "refusal_answers": list(REFUSALS),
            "train_seconds": 1.0, "total_seconds": 2.0, "torch_threads": 1, "losses": [0.5],
            "data_sha256": {}, "gate_rules": rules, "gates": gates, "samples": {},
            "files_sha256": {}}
    text = render_card(card)
    assert "| instruct.refusal_harmless | 0.200 | <= 0.1 | FAIL |" in text
    assert "| instruct.refusal_harmful | 0.950 | >= 0.8 | PASS |" in text
