"""The gates of the post-trained Gemma, measured on held-out data only.

* ``refusal_harmful`` / ``refusal_harmless``: share of greedy 16-token replies to the paper's
  refusal TEST requests (``harmful_test_100`` / ``harmless_test_100``, never trained on) in
  Gemma's chat format that open with a prefix of the paper's refusal score (paper code
  Refusal/utils.py:get_refusal_scores);
* ``nll``: mean next-token NLL (nats) of plain English: the first 100 true statements of
  ``facts.csv`` and the harmless test requests as bare text; the gate is on ``nll_shift`` =
  |post - base|;
* ``probe``: mass-mean truth probe (paper code Knowledge+Truthfulness/probes.py:MMProbe: per-split
centering, difference of class
  means, a 1-D logistic threshold) on ``cities`` split by city, 300 statements to train and
  100 held out; the layer is chosen by cross-validation on the training statements only.
"""

from __future__ import annotations

import csv
import random
from collections.abc import Callable, Sequence
from typing import Any

import torch

from mechtests.data.sources import DatasetSource
from mechtests.methods.refusal_score import RefusalScorer
from mechtests.organism.gates import probe_accuracy
from mechtests.posttrain.data import chat_prompt
from mechtests.posttrain.train import greedy_generate

REFUSAL_TOKENS = 16  # the paper's max_tokens_generated (paper code Refusal/apply_refusal_dir.py)
PROBE_TRAIN, PROBE_TEST, PROBE_FOLDS = 300, 100, 5
NLL_FACTS = 100  # the first true statements of facts.csv


def replies(model: Any, tokenizer: Any, requests: Sequence[str]) -> list[str]:
    """Greedy 16-token replies in Gemma's chat format."""
    return greedy_generate(model, tokenizer, [chat_prompt(r) for r in requests], REFUSAL_TOKENS)


def refusal_rate(texts: Sequence[str]) -> float:
    scorer = RefusalScorer.paper()
    return sum(scorer.is_refusal(t) for t in texts) / len(texts)


def plain_english(source: DatasetSource, harmless_test: Sequence[str]) -> list[str]:
    """Held-out plain English: the true ``facts.csv`` statements and the harmless test requests."""
    with source.statements_csv("facts").open(newline="", encoding="utf-8") as fh:
        facts = [row["statement"] for row in csv.DictReader(fh) if row["label"] == "1"]
    return facts[:NLL_FACTS] + list(harmless_test)


def mean_nll(model: Any, tokenizer: Any, texts: Sequence[str], batch_size: int = 16) -> float:
    """Token-weighted mean next-token NLL of ``texts`` (BOS prepended, right padding)."""
    tokenizer.padding_side = "right"
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            enc = tokenizer(list(texts[start:start + batch_size]), return_tensors="pt",
                            padding=True)
            logits = model(**enc).logits[:, :-1].float()
            target = enc.input_ids[:, 1:].masked_fill(enc.attention_mask[:, 1:] == 0, -100)
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                ignore_index=-100, reduction="sum")
            total += float(loss)
            count += int((target != -100).sum())
    return total / count


def last_token_states(model: Any, tokenizer: Any, texts: Sequence[str],
                      batch_size: int = 32) -> torch.Tensor:
    """Block outputs at each text's last token: [n, n_layers, d] (embeddings dropped)."""
    tokenizer.padding_side = "right"
    body = model.get_decoder()
    rows = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            enc = tokenizer(list(texts[start:start + batch_size]), return_tensors="pt",
                            padding=True)
            hidden = body(**enc, output_hidden_states=True).hidden_states
            last = enc.attention_mask.sum(1) - 1
            stacked = torch.stack(hidden[1:], 1)  # [b, L, t, d]
            rows.append(stacked[torch.arange(len(last)), :, last].float())
    return torch.cat(rows)


def city_split(source: DatasetSource, seed: int) -> tuple[list[tuple[str, int]], ...]:
    """(train, test) statements of ``cities``, split by city (no city on both sides)."""
    with source.statements_csv("cities").open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    by_city: dict[str, list[tuple[str, int]]] = {}
    for row in rows:
        by_city.setdefault(row["city"], []).append((row["statement"], int(row["label"])))
    cities = sorted(by_city)
    random.Random(seed).shuffle(cities)
    train: list[tuple[str, int]] = []
    test: list[tuple[str, int]] = []
    for city in cities:
        side = train if len(train) < PROBE_TRAIN else test
        if side is test and len(test) >= PROBE_TEST:
            break
        side.extend(by_city[city])
    return train, test


def _centered(acts: torch.Tensor, labels: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    return acts - acts.mean(0, keepdim=True), torch.tensor(list(labels))


def truth_probe(model: Any, tokenizer: Any, source: DatasetSource,
                seed: int) -> dict[str, float]:
    """Held-out accuracy of the mass-mean probe at the layer chosen on the training split."""
    train, test = city_split(source, seed)
    acts = last_token_states(model, tokenizer, [s for s, _ in train + test])
    train_acts, test_acts = acts[: len(train)], acts[len(train):]
    labels = [y for _, y in train]
    folds = [list(range(k, len(train), PROBE_FOLDS)) for k in range(PROBE_FOLDS)]
    n_layers = acts.shape[1]
    cv = []
    for layer in range(n_layers):
        scores = []
        for fold in folds:
            inside = [i for i in range(len(train)) if i not in set(fold)]
            split = {"fit": _centered(train_acts[inside], [labels[i] for i in inside]),
                     "val": _centered(train_acts[fold], [labels[i] for i in fold])}
            scores.append(probe_accuracy(split, ["fit"], "val", layer))
        cv.append(sum(scores) / len(scores))
    layer = max(range(n_layers), key=cv.__getitem__)
    split = {"train": _centered(train_acts, labels),
             "test": _centered(test_acts, [y for _, y in test])}
    return {"probe": probe_accuracy(split, ["train"], "test", layer), "probe_layer": layer,
            "probe_cv": cv[layer]}


def measure(model: Any, tokenizer: Any, source: DatasetSource, harmful_test: Sequence[str],
            harmless_test: Sequence[str], seed: int, chat: bool,
            log: Callable[[str], None]) -> tuple[dict[str, float], dict[str, list[str]]]:
    """Gate values of one model (refusal only when ``chat``) and its replies."""
    values = truth_probe(model, tokenizer, source, seed)
    values["nll"] = mean_nll(model, tokenizer, plain_english(source, harmless_test))
    log(f"probe {values['probe']:.3f} (layer {values['probe_layer']}), nll {values['nll']:.3f}")
    texts: dict[str, list[str]] = {}
    if chat:
        texts = {"harmful": replies(model, tokenizer, harmful_test),
                 "harmless": replies(model, tokenizer, harmless_test)}
        values["refusal_harmful"] = refusal_rate(texts["harmful"])
        values["refusal_harmless"] = refusal_rate(texts["harmless"])
        log(f"refusal harmful {values['refusal_harmful']:.2f}, "
            f"harmless {values['refusal_harmless']:.2f}")
    return values, texts
