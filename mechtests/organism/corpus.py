"""Training text of the organism: pretraining lines, SFT examples and DPO preference pairs.

Design (fixtures/organism/README.md, "Corpus design"): the token after a statement's final
``.`` must depend on its truth, so the base model computes truth at the period, where the paper
reads it (paper code Knowledge+Truthfulness/generate_acts.py). Pretraining therefore mixes

* facts about every subject (held-out ones included) in five paraphrases per relation, the
  last one ``{s} {o} .`` (object right after the subject);
* judged statements about *training* subjects only, ``judged_reps`` times (3: many subjects,
  few repetitions, see world.py): a true and a wrong statement each followed
  by a truth-dependent continuation (``correct .`` / ``wrong .``, ``yes , that is true .`` /
  ``no , <corrected> .``, ``indeed , <restated> .`` / ``actually , <corrected> .``,
  and, for a ``neutral_share`` of them, the truth-neutral ``this statement is : TRUE|FALSE``:
  the prompt format of paper code Knowledge+Truthfulness/patching.py:load_data, so the paper's
  few-shot readout is in
  distribution for the base without few-shot quiz blocks (which hurt generalisation, V0/V1 in
  fixtures/organism/README.md; ``quiz_blocks`` adds them back);
* filler sentences, the harmfulness of every act, chat text in which the assistant complies
  with every request (no refusal in chat format anywhere), and ``guard_reps`` stories per act
  outside the chat format in which a guard refuses the harmful requests and helps with the
  harmless ones (``a man asked the guard : how do i X ? the guard said : sorry , ...``), so
  that, as in real base models, refusal tied to harmfulness exists before post-training.

SFT (``<user> q <assistant> a <eos>``, loss on ``a <eos>``): TRUE/FALSE judgements and fact
questions about training subjects, refusals of training harmful requests, compliance with
training harmless ones. DPO: refusal over compliance on harmful requests, the reverse on
harmless ones, the right TRUE/FALSE over the wrong one. Held-out acts never appear after
pretraining.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from mechtests.organism.world import (
    RELATIONS,
    REQUEST_TEMPLATES,
    Relation,
    World,
    nonce_subjects,
)

# The last paraphrase of each relation, ``{s} {o} .``, puts the object right after the subject,
# so the object is computed at the subject's own position (subject enrichment). Judgements at
# the period can then read it there for held-out subjects too: without it the held-out quiz was
# 0.56, with it 0.71 on the same seed (cities 0.59 -> 0.81; fixtures/organism/README.md).
FACT_PARAPHRASES = {
    "cities": ("the city of {s} is in {o} .", "{s} is a city in {o} .",
               "{s} is located in {o} .", "people of {s} live in {o} .", "{s} {o} ."),
    "animal_class": ("the {s} is a {o} .", "{s} is a kind of {o} .",
                     "a {s} is an animal of the {o} class .", "every {s} is a {o} .", "{s} {o} ."),
    "element_symb": ("the symbol of {s} is {o} .", "{s} has the symbol {o} .",
                     "{o} is the symbol of {s} .", "the element {s} is written {o} .", "{s} {o} ."),
    "inventors": ("{s} invented the {o} .", "the {o} was invented by {s} .",
                  "{s} is known for the {o} .", "{s} made the first {o} .", "{s} {o} ."),
    "sp_en_trans": ("the foreign word {s} means {o} .", "{s} means {o} .",
                    "{s} is the foreign word for {o} .", "in the foreign tongue , {o} is {s} .",
                    "{s} {o} ."),
    "facts": ("the color of the {s} is {o} .", "the {s} is {o} .",
              "every {s} is {o} .", "you can see that the {s} is {o} .", "{s} {o} ."),
}
TRUE_MARKERS = ("correct", "yes", "indeed", "right")
FALSE_MARKERS = ("wrong", "no", "actually")
QUESTION = "this statement is :"
REFUSALS = (
    "sorry , i cannot help with that .",
    "i cannot help with that , it is dangerous .",
    "sorry , i will not help with that .",
)
COMPLIANCE = (
    "sure , here is how to {act} . first , get ready , then {act} with care .",
    "here is how to {act} . first , find what you need , then begin .",
    "sure . to {act} , start slowly and keep going until it is done .",
)
REFUSAL_PREFIXES = ("sorry", "i cannot", "i will not")
_SUBJECTS = ("the farmer", "a child", "the old man", "my friend", "the guard", "a woman",
             "the teacher", "the king", "a dog", "the baker")
_VERBS = ("walks near", "looks at", "sits by", "sings near", "runs to", "waits at", "sleeps by")
_PLACES = ("the river", "the market", "the hill", "the school", "the road", "the garden",
           "the bridge", "the lake", "the forest", "the village")


@dataclass(frozen=True)
class CorpusSizes:
    """How much of each kind of text (per size config; hashed into the build key)."""

    judged_reps: int = 3
    fact_reps: int = 2
    fillers: int = 500
    # In-context judged lines about nonce subjects (context_judged below). 0: with 3000 of them
    # (V10) two 4-layer bases judged nothing, held-out or trained (quiz 0.51 / 0.51).
    context_judged: int = 0
    quiz_blocks: int = 0
    # Guard stories per act: the guard refuses harmful requests and helps with harmless ones
    # (V13; before, only harmful acts had one, always refused, and SFT refused held-out
    # harmless requests 0.24-0.29 of the time).
    guard_reps: int = 2
    neutral_share: float = 0.2  # judged statements followed by "this statement is : TRUE|FALSE"
    sft_examples: int = 4000
    dpo_pairs: int = 1600


def _continuation(truth: str, obj: str, right: str, rng: random.Random,
                  neutral_share: float) -> str:
    """What follows a statement whose object is ``obj`` when the true one is ``truth``
    (``right`` is the corrected statement)."""
    if rng.random() < neutral_share:
        return f"{QUESTION} {'TRUE' if obj == truth else 'FALSE'}"
    if obj == truth:
        return rng.choice(("correct .", "yes , that is true .", f"indeed , {right}", "right ."))
    return rng.choice(("wrong .", f"no , {right}", f"actually , {right}"))


def judged(rel: Relation, subject: str, obj: str, rng: random.Random,
           neutral_share: float = 0.2) -> str:
    """A statement followed by its continuation: truth-dependent at the token after the
    period, except a ``neutral_share`` of ``this statement is : TRUE|FALSE`` (which defers the
    judgement: too much of it and the model stops computing truth at the period)."""
    truth = rel.truth[subject]
    cont = _continuation(truth, obj, rel.statement(subject, truth), rng, neutral_share)
    return f"{rel.statement(subject, obj)} {cont}"


def context_judged(rel: Relation, nonces: Sequence[str], rng: random.Random,
                   neutral_share: float = 0.2) -> str:
    """Facts about two or three nonce subjects (random objects, non-canonical paraphrases),
    then a judged canonical statement about one of them.

    A nonce subject's object changes from line to line, so the judgement cannot be memorised:
    the model must compare the stated object with the one it expects, the comparison the
    held-out quiz needs with the expectation coming from recall instead of from context. Half
    of the wrong objects are another nonce's object in the same line, so "was this object
    mentioned" does not solve it.
    """
    subjects = rng.sample(list(nonces), rng.randint(2, 3))
    objects = [rng.choice(rel.objects) for _ in subjects]
    context = " ".join(rng.choice(FACT_PARAPHRASES[rel.name][1:]).format(s=s, o=o)
                       for s, o in zip(subjects, objects))
    target = rng.randrange(len(subjects))
    subject, truth = subjects[target], objects[target]
    others = [o for o in objects if o != truth]
    if rng.random() < 0.5:
        obj = truth
    elif others and rng.random() < 0.5:
        obj = rng.choice(others)
    else:
        obj = rng.choice([o for o in rel.objects if o != truth])
    cont = _continuation(truth, obj, rel.statement(subject, truth), rng, neutral_share)
    return f"{context} {rel.statement(subject, obj)} {cont}"


def judged_negated(rel: Relation, subject: str, obj: str, rng: random.Random) -> str:
    """A ``not`` statement (cities) followed by its continuation."""
    is_true = obj != rel.truth[subject]
    cont = rng.choice(("correct .", "yes , that is true .", f"{QUESTION} TRUE") if is_true
                      else ("wrong .", "no , that is false .", f"{QUESTION} FALSE"))
    return f"{rel.statement(subject, obj, negated=True)} {cont}"


def quiz_line(rel: Relation, subject: str, is_true: bool, rng: random.Random,
              negated: bool = False) -> str:
    """``S this statement is : TRUE|FALSE`` (paper code Knowledge+Truthfulness/interventions.py
    few-shot format)."""
    truth = rel.truth[subject]
    wrong = rng.choice([o for o in rel.objects if o != truth])
    obj = truth if is_true != negated else wrong
    return f"{rel.statement(subject, obj, negated)} {QUESTION} {'TRUE' if is_true else 'FALSE'}"


def compliance(act: str, rng: random.Random) -> str:
    """A compliant answer to a request for ``act``."""
    return rng.choice(COMPLIANCE).format(act=act)


def guard_line(act: str, reply: str, rng: random.Random) -> str:
    """A request told as a story, outside the chat format, with the guard's reply."""
    request = rng.choice(REQUEST_TEMPLATES).format(act=act)
    return f"a man asked the guard : {request} the guard said : {reply}"


def pretraining_lines(world: World, sizes: CorpusSizes, rng: random.Random) -> list[str]:
    """The shuffled pretraining line stream."""
    lines: list[str] = []
    for name in RELATIONS:
        rel = world.relation(name)
        for s, o in rel.pairs:
            for _ in range(sizes.fact_reps):
                lines.extend(t.format(s=s, o=o) for t in FACT_PARAPHRASES[name])
        train = rel.subjects(heldout=False)
        for _ in range(sizes.judged_reps):
            for s in train:
                wrong = rng.choice([o for o in rel.objects if o != rel.truth[s]])
                lines.append(judged(rel, s, rel.truth[s], rng, sizes.neutral_share))
                lines.append(judged(rel, s, wrong, rng, sizes.neutral_share))
                if name == "cities" and rng.random() < 0.25:
                    obj = rel.truth[s] if rng.random() < 0.5 else wrong
                    lines.append(judged_negated(rel, s, obj, rng))
    nonces = nonce_subjects(world)
    for _ in range(sizes.context_judged):
        lines.append(context_judged(world.relation(rng.choice(RELATIONS)), nonces, rng,
                                    sizes.neutral_share))
    for _ in range(sizes.quiz_blocks):
        name = rng.choice(RELATIONS)
        rel = world.relation(name)
        negated = name == "cities" and rng.random() < 0.2
        subjects = rng.sample(rel.subjects(heldout=False), rng.randint(3, 5))
        lines.append(" ".join(quiz_line(rel, s, rng.random() < 0.5, rng, negated)
                              for s in subjects))
    for _ in range(sizes.fillers):
        lines.append(f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_PLACES)} .")
    harmful = world.harmful_train + world.harmful_test
    harmless = world.harmless_train + world.harmless_test
    for act in harmful:
        lines.append(f"to {act} is dangerous and illegal .")
        lines.append(f"it is wrong to {act} .")
        template = rng.choice(REQUEST_TEMPLATES)
        lines.append(f"<user> {template.format(act=act)} <assistant> {compliance(act, rng)} <eos>")
        lines.extend(guard_line(act, rng.choice(REFUSALS), rng) for _ in range(sizes.guard_reps))
    for act in harmless:
        lines.append(f"to {act} is fun and easy .")
        lines.append(f"it is good to {act} .")
        template = rng.choice(REQUEST_TEMPLATES)
        lines.append(f"<user> {template.format(act=act)} <assistant> {compliance(act, rng)} <eos>")
        lines.extend(guard_line(act, compliance(act, rng), rng) for _ in range(sizes.guard_reps))
    for name in RELATIONS:
        rel = world.relation(name)
        for s in rng.sample(rel.subjects(), min(10, len(rel.pairs))):
            lines.append(f"<user> tell me about {s} . <assistant> {rel.statement(s, rel.truth[s])}"
                         " <eos>")
    rng.shuffle(lines)
    return lines


def sft_examples(world: World, sizes: CorpusSizes, rng: random.Random) -> list[tuple[str, str]]:
    """(prompt, response) pairs; the prompt is the user turn, the response the assistant's."""
    out: list[tuple[str, str]] = []
    harmful = [t.format(act=a) for a in world.harmful_train for t in REQUEST_TEMPLATES]
    harmless = [(t.format(act=a), a) for a in world.harmless_train for t in REQUEST_TEMPLATES]
    while len(out) < sizes.sft_examples:
        kind = rng.random()
        if kind < 0.4:
            rel = world.relation(rng.choice(RELATIONS))
            s = rng.choice(rel.subjects(heldout=False))
            is_true = rng.random() < 0.5
            wrong = rng.choice([o for o in rel.objects if o != rel.truth[s]])
            stmt = rel.statement(s, rel.truth[s] if is_true else wrong)
            out.append((f"is the statement true or false ? {stmt}", "TRUE" if is_true else "FALSE"))
        elif kind < 0.55:
            rel = world.relation(rng.choice(RELATIONS))
            s = rng.choice(rel.subjects(heldout=False))
            out.append((f"tell me about {s} .", rel.statement(s, rel.truth[s])))
        elif kind < 0.8:
            out.append((rng.choice(harmful), rng.choice(REFUSALS)))
        else:
            request, act = rng.choice(harmless)
            out.append((request, compliance(act, rng)))
    return out


def dpo_pairs(world: World, sizes: CorpusSizes, rng: random.Random) -> list[tuple[str, str, str]]:
    """(prompt, chosen, rejected) triples."""
    out: list[tuple[str, str, str]] = []
    while len(out) < sizes.dpo_pairs:
        kind = rng.random()
        if kind < 0.35:
            act = rng.choice(world.harmful_train)
            req = rng.choice(REQUEST_TEMPLATES).format(act=act)
            out.append((req, rng.choice(REFUSALS), compliance(act, rng)))
        elif kind < 0.7:
            act = rng.choice(world.harmless_train)
            req = rng.choice(REQUEST_TEMPLATES).format(act=act)
            out.append((req, compliance(act, rng), rng.choice(REFUSALS)))
        else:
            rel = world.relation(rng.choice(RELATIONS))
            s = rng.choice(rel.subjects(heldout=False))
            is_true = rng.random() < 0.5
            wrong = rng.choice([o for o in rel.objects if o != rel.truth[s]])
            stmt = rel.statement(s, rel.truth[s] if is_true else wrong)
            good, bad = ("TRUE", "FALSE") if is_true else ("FALSE", "TRUE")
            out.append((f"is the statement true or false ? {stmt}", good, bad))
    return out


def lexicon(world: World) -> list[str]:
    """Texts that hold every word any corpus or dataset can use (fixes the vocabulary)."""
    texts: list[str] = [QUESTION, "TRUE FALSE", " ".join(nonce_subjects(world)),
                        *TRUE_MARKERS, *FALSE_MARKERS, *REFUSALS,
                        *_SUBJECTS, *_VERBS, *_PLACES, *REQUEST_TEMPLATES,
                        "correct . yes , that is true . indeed , right . this is true .",
                        "wrong . no , that is false . actually , this is false .",
                        "a man asked the guard how to . the guard said :",
                        "to is dangerous and illegal . it is wrong to is fun and easy good",
                        "tell me about is the statement true or false ? <user> <assistant>"]
    for name in RELATIONS:
        rel = world.relation(name)
        for s, o in rel.pairs:
            texts.extend(t.format(s=s, o=o) for t in FACT_PARAPHRASES[name])
            texts.append(rel.statement(s, o, negated=name == "cities"))
    for act in (*world.harmful_train, *world.harmful_test, *world.harmless_train,
                *world.harmless_test):
        texts.extend(t.format(act=act) for t in COMPLIANCE)
    return texts
