"""TRUE/FALSE statement pairs and few-shot prompts for knowledge patching (paper code
Knowledge+Truthfulness/patching_process_data.py).

Pairing, per tokenizer (``patching_process_data.py``):

1. Keep the statements with the dataset's fixed token layout. The paper hard-codes one id
   pattern per dataset and tokenizer (Llama-3 cities: 11 tokens, ``[BOS, The, city, of]`` +
   3 city tokens + ``[is, in]`` + 1 country token + ``.``); we derive it: the most common token
   length, then every position where one id is shared by at least ``template_share`` (90 %) of
   those statements is a template position that a kept statement must match. The other
   positions are the "knowledge" slots (``[s*]``/``[o*]`` in the paper's column labels).
2. Pair each kept TRUE statement with a kept FALSE statement that has the same last word,
   popping from the pool only while it holds more than one candidate (the paper's rule, so the
   last candidate can be reused). The paper's last word is ``split()[-1]`` ("Venezuela."); we
   strip outer punctuation and skip punctuation-only words (:func:`last_word`), which groups the
   paper's datasets identically and makes ``"... rofuvir ."`` (the organism) pair by country.
3. ``tulu_extracted``: consecutive rows ``(true, false)`` sharing an ``id`` are a pair, kept when
   both have the same token length; the knowledge columns are per pair (ids differ).

Prompt (``patching.py:load_data``): the dataset's two TRUE and two FALSE few-shot lines
(``du2025/few_shot_samples.json``, ``"<statement> This statement is: TRUE"``), TRUE lines first,
shuffled in place once per pair by one ``random.Random(1)`` stream (the paper's
``random.seed(1)`` then ``random.shuffle`` per pair), each followed by ``"\\n"``, then
``statement + question``. The patched window is the statement and question tokens: the prompt's
length minus the few-shot prefix's (the paper: template length + 4 for ``" This statement is:"``;
for tulu ``len - 65``, or 64 in its visualiser, which we do not copy).

Example:
    >>> tok = lambda s: [0] + [hash(w) % 97 + 1 for w in s.split()]
    >>> ps = build_patching_set(
    ...     "toy", ["a x .", "b y .", "c x .", "d y ."], [1, 1, 0, 0],
    ...     ["e x . Q : TRUE", "f y . Q : FALSE"], " Q :", tok)
    >>> len(ps), ps.columns
    (2, ('[s1]', '[o1]', '.', 'Q', ':'))
"""

from __future__ import annotations

import csv
import random
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path

from mechtests.errors import DatasetError

__all__ = [
    "GROUPED_DATASETS",
    "PatchingSet",
    "build_patching_set",
    "build_tulu_set",
    "last_word",
    "read_tulu_pairs",
    "split_examples",
]

GROUPED_DATASETS = ("tulu_extracted",)
"""Datasets whose pairs differ in layout: heatmaps are grouped into knowledge/others/last."""

Tokenize = Callable[[str], list[int]]


@dataclass(frozen=True)
class PatchingSet:
    """The pairs of one dataset, ready to patch: prompts, windows and knowledge columns.

    ``width`` is the widest window; pair ``i`` patches its last ``widths[i]`` tokens, i.e.
    columns ``width - widths[i] .. width - 1``. ``diff_columns[i]`` are the columns (relative to
    the pair's own window) where its TRUE and FALSE token ids differ. For datasets with one
    layout, ``columns`` labels every column and ``subject_columns`` / ``object_columns`` are the
    knowledge slots whose ids differ / agree between TRUE and FALSE.
    """

    dataset: str
    true_prompts: tuple[str, ...]
    false_prompts: tuple[str, ...]
    widths: tuple[int, ...]
    diff_columns: tuple[tuple[int, ...], ...]
    columns: tuple[str, ...] = ()
    subject_columns: tuple[int, ...] = ()
    object_columns: tuple[int, ...] = ()
    grouped: bool = False
    dropped: int = 0  # pairs dropped because their prompts tokenised to different lengths

    def __len__(self) -> int:
        return len(self.true_prompts)

    # cached: the knowledge statistics read these once per bootstrap resample
    @cached_property
    def width(self) -> int:
        return max(self.widths) if self.widths else 0

    @cached_property
    def knowledge_columns(self) -> tuple[int, ...]:
        return tuple(sorted(self.subject_columns + self.object_columns))

    @cached_property
    def first_diff_column(self) -> int:
        """The first column (of the widest window) where some pair's TRUE and FALSE differ."""
        width = self.width
        firsts = [width - w + min(d) for w, d in zip(self.widths, self.diff_columns) if d]
        return min(firsts) if firsts else width

    @property
    def last_subject_column(self) -> int:
        """The last subject column (K4's column), else the last knowledge column."""
        cols = self.subject_columns or self.knowledge_columns
        if not cols:
            raise DatasetError(f"dataset {self.dataset!r} has no knowledge columns")
        return max(cols)

    def select(self, keep: Sequence[int]) -> PatchingSet:
        """The pairs at indices ``keep`` (columns unchanged)."""
        return replace(
            self,
            true_prompts=tuple(self.true_prompts[i] for i in keep),
            false_prompts=tuple(self.false_prompts[i] for i in keep),
            widths=tuple(self.widths[i] for i in keep),
            diff_columns=tuple(self.diff_columns[i] for i in keep),
        )


def split_examples(examples: Sequence[str]) -> tuple[list[str], list[str]]:
    """Few-shot lines split into (TRUE lines, FALSE lines) by their last word, file order kept."""
    true: list[str] = []
    false: list[str] = []
    for example in examples:
        words = example.split()
        label = words[-1].upper() if words else ""
        if label not in ("TRUE", "FALSE"):
            raise DatasetError(
                f"few-shot example {example!r} does not end in TRUE or FALSE; expected "
                "'<statement> This statement is: TRUE|FALSE'. Fix: correct few_shot_samples.json."
            )
        (true if label == "TRUE" else false).append(example)
    return true, false


def _prompts(
    pairs: Sequence[tuple[str, str]], examples: Sequence[str], question: str, prefix: str, seed: int
) -> list[tuple[str, str, str]]:
    """(few-shot prefix, TRUE prompt, FALSE prompt) per pair (module docstring)."""
    true_lines, false_lines = split_examples(examples)
    lines = [e + "\n" for e in true_lines + false_lines]
    rng = random.Random(seed)
    out = []
    for t, f in pairs:
        rng.shuffle(lines)
        shots = prefix + "".join(lines)
        out.append((shots, shots + t + question, shots + f + question))
    return out


def _template(ids: Sequence[Sequence[int]], share: float) -> tuple[int, dict[int, int]]:
    """The modal length and its template positions ``{position: id}``."""
    length = Counter(len(x) for x in ids).most_common(1)[0][0]
    same = [x for x in ids if len(x) == length]
    template = {}
    for pos in range(length):
        tok, count = Counter(x[pos] for x in same).most_common(1)[0]
        if count >= share * len(same):
            template[pos] = tok
    return length, template


def last_word(statement: str) -> str:
    """The last word with a letter or digit, outer punctuation stripped (``"Venezuela."`` and
    ``"rofuvir ."`` both give the country)."""
    for word in reversed(statement.split()):
        core = re.sub(r"^\W+|\W+$", "", word)
        if core:
            return core
    return statement.strip()


def _pair_by_last_word(true: Sequence[str], false: Sequence[str]) -> list[tuple[str, str]]:
    pool: dict[str, list[str]] = {}
    for s in false:
        pool.setdefault(last_word(s), []).append(s)
    pairs = []
    for s in true:
        candidates = pool.get(last_word(s))
        if not candidates:
            continue
        pairs.append((s, candidates.pop(-1) if len(candidates) > 1 else candidates[0]))
    return pairs


def build_patching_set(
    dataset: str,
    statements: Sequence[str],
    labels: Sequence[int],
    examples: Sequence[str],
    question: str,
    tokenize: Tokenize,
    token_text: Callable[[int], str] = str,
    prefix: str = "",
    seed: int = 1,
    template_share: float = 0.9,
) -> PatchingSet:
    """Pairs of a ``statement,label`` dataset (module docstring, steps 1-2) with prompts.

    ``tokenize`` maps text to ids with the model's special tokens (the paper's
    ``tokenizer(statement).input_ids``); ``token_text`` names a template column's token;
    ``prefix`` is the model's ``prompt_prefix``.
    """
    ids = [tokenize(s) for s in statements]
    if not ids:
        raise DatasetError(f"dataset {dataset!r} is empty. Fix: point at a non-empty CSV.")
    length, template = _template(ids, template_share)
    kept = [
        i for i, x in enumerate(ids)
        if len(x) == length and all(x[p] == t for p, t in template.items())
    ]
    true = [statements[i] for i in kept if labels[i] == 1]
    false = [statements[i] for i in kept if labels[i] == 0]
    built = _prompts(_pair_by_last_word(true, false), examples, question, prefix, seed)
    rows: list[tuple[str, str, int, list[int], list[int]]] = []
    dropped = 0
    for shots, tp, fp in built:
        t_ids, f_ids = tokenize(tp), tokenize(fp)
        width = len(t_ids) - len(tokenize(shots))
        if len(t_ids) != len(f_ids) or width < 1:
            continue
        rows.append((tp, fp, width, t_ids[-width:], f_ids[-width:]))
    if rows:  # one layout: keep the modal window width
        modal = Counter(r[2] for r in rows).most_common(1)[0][0]
        dropped = len(built) - sum(r[2] == modal for r in rows)
        rows = [r for r in rows if r[2] == modal]
    if not rows:
        raise DatasetError(
            f"dataset {dataset!r} gave no TRUE/FALSE pairs with a shared last word and equal "
            f"token length ({len(kept)} of {len(ids)} statements fit the {length}-token "
            "layout). Fix: check the dataset and the tokenizer."
        )
    width = rows[0][2]
    variable = [j for j in range(width) if len({r[3][j] for r in rows} | {r[4][j] for r in rows})
                > 1]
    subject = [j for j in variable if any(r[3][j] != r[4][j] for r in rows)]
    obj = [j for j in variable if j not in subject]
    labels_out = []
    for j in range(width):
        if j in subject:
            labels_out.append(f"[s{subject.index(j) + 1}]")
        elif j in obj:
            labels_out.append(f"[o{obj.index(j) + 1}]")
        else:
            labels_out.append(token_text(rows[0][3][j]).strip() or repr(token_text(rows[0][3][j])))
    return PatchingSet(
        dataset=dataset,
        true_prompts=tuple(r[0] for r in rows),
        false_prompts=tuple(r[1] for r in rows),
        widths=tuple(r[2] for r in rows),
        diff_columns=tuple(
            tuple(j for j in range(width) if r[3][j] != r[4][j]) for r in rows
        ),
        columns=tuple(labels_out),
        subject_columns=tuple(subject),
        object_columns=tuple(obj),
        dropped=dropped,
    )


def read_tulu_pairs(path: Path) -> list[tuple[str, str]]:
    """``id,statement,label`` rows as (TRUE, FALSE) pairs: rows ``2k`` and ``2k+1`` share an id
    and are labelled 1 then 0 (the paper's ``tulu_extracted.csv``)."""
    with Path(path).open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        fields = reader.fieldnames or []
        if not {"id", "statement", "label"} <= set(fields):
            raise DatasetError(
                f"{path} has columns {fields}; expected id,statement,label. Fix: use the "
                "paper's tulu_extracted.csv format."
            )
        rows = list(reader)
    if not rows or len(rows) % 2:
        raise DatasetError(
            f"{path} has {len(rows)} rows; expected a non-empty even number (true/false pairs). "
            "Fix: every id needs one true row followed by one false row."
        )
    pairs = []
    for k in range(0, len(rows), 2):
        a, b = rows[k], rows[k + 1]
        if a["id"] != b["id"] or (a["label"].strip(), b["label"].strip()) != ("1", "0"):
            raise DatasetError(
                f"{path} rows {k + 2}-{k + 3}: expected one id with labels 1 then 0, got "
                f"ids {a['id']!r}/{b['id']!r} labels {a['label']!r}/{b['label']!r}. Fix: order "
                "each pair true first, false second."
            )
        pairs.append((a["statement"], b["statement"]))
    return pairs


def build_tulu_set(
    pairs: Sequence[tuple[str, str]],
    examples: Sequence[str],
    question: str,
    tokenize: Tokenize,
    prefix: str = "",
    seed: int = 1,
    dataset: str = "tulu_extracted",
) -> PatchingSet:
    """Pairs of different layouts (module docstring, step 3), grouped heatmap columns."""
    same = [(t, f) for t, f in pairs if len(tokenize(t)) == len(tokenize(f))]
    rows = []
    dropped = 0
    for shots, tp, fp in _prompts(same, examples, question, prefix, seed):
        t_ids, f_ids = tokenize(tp), tokenize(fp)
        width = len(t_ids) - len(tokenize(shots))
        diff = tuple(j for j in range(width) if t_ids[-width:][j] != f_ids[-width:][j])
        if len(t_ids) != len(f_ids) or width < 2 or not diff:
            dropped += 1
            continue
        rows.append((tp, fp, width, diff))
    if not rows:
        raise DatasetError(
            f"dataset {dataset!r} has no (true, false) pair of equal token length that differs. "
            "Fix: check the file and the tokenizer."
        )
    return PatchingSet(
        dataset=dataset,
        true_prompts=tuple(r[0] for r in rows),
        false_prompts=tuple(r[1] for r in rows),
        widths=tuple(r[2] for r in rows),
        diff_columns=tuple(r[3] for r in rows),
        columns=("knowledge", "others", "last token"),
        grouped=True,
        dropped=dropped,
    )
