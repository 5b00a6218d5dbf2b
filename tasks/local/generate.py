"""Deterministic generator of the embedded local multi-task data (no network, no TF).

Seven families shaped like ExMIX's (summarisation, NLI, SCAN, closed-book QA, reading
comprehension, classification, plus a text corpus for span corruption). Everything comes from
one `random.Random(SEED)` stream per family, so the data (and therefore the committed
SentencePiece model trained on it by make_vocab.py) is identical on every machine.

Why rule-generated data: every family has a rule a tiny model can pick up within minutes on CPU,
so a local run shows real learning curves, not noise. Never iterate over a `set` here: string
hashing is randomised per process and would break determinism.
"""
from __future__ import annotations

import functools
import random
from typing import Callable

SEED = 20240607
NUM_TRAIN = 3000
NUM_VALIDATION = 150

Example = dict[str, object]


# ----------------------------------------------------------------------------- names
# A small syllable inventory keeps names compositional for a ~1000-piece vocabulary: names
# tokenize into a few syllable pieces instead of each name claiming a piece of its own.
_ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z"]
_VOWELS = ["a", "e", "i", "o", "u"]
_CODAS = ["", "", "n", "r", "l"]


def _word(rng: random.Random, syllables: int) -> str:
    return "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS)
                   for _ in range(syllables))


def _unique_names(rng: random.Random, n: int, syllables: tuple[int, ...], taken: dict) -> list[str]:
    """n distinct capitalised pseudo-words not in `taken` (a dict used as an ordered set)."""
    out = []
    while len(out) < n:
        w = _word(rng, rng.choice(syllables)).capitalize()
        if w not in taken and 4 <= len(w) <= 11:
            taken[w] = None
            out.append(w)
    return out


@functools.lru_cache(maxsize=None)
def _world() -> dict:
    """Shared entity tables (people, cities, countries) so families talk about one world."""
    rng = random.Random(SEED)
    taken: dict = {}
    return {
        "first": _unique_names(rng, 40, (2,), taken),
        "last": _unique_names(rng, 60, (2, 3), taken),
        "cities": _unique_names(rng, 250, (2, 3), taken),
        "countries": _unique_names(rng, 200, (2, 3), taken),
        "languages": _unique_names(rng, 30, (2,), taken),
        "currencies": _unique_names(rng, 30, (2,), taken),
    }


def _person(rng: random.Random) -> str:
    w = _world()
    return f"{rng.choice(w['first'])} {rng.choice(w['last'])}"


def _split(examples: list[Example]) -> dict[str, list[Example]]:
    """First NUM_VALIDATION examples become validation (held out), the rest train."""
    for ex in examples:
        ex.pop("_key", None)
    return {"validation": examples[:NUM_VALIDATION], "train": examples[NUM_VALIDATION:]}


def _dedup(rng: random.Random, make: Callable[[random.Random], Example], n: int,
           key: str = "_key") -> list[Example]:
    """Draw examples until n with distinct `key` (keeps validation disjoint from train)."""
    seen: dict = {}
    out = []
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 50 * n:
            raise RuntimeError(f"generator cannot produce {n} distinct examples")
        ex = make(rng)
        k = ex[key]
        if k in seen:
            continue
        seen[k] = None
        out.append(ex)
    return out


# ----------------------------------------------------------------------------- summarize
_PROFESSIONS = ["painter", "engineer", "farmer", "poet", "doctor", "sailor", "teacher", "baker",
                "architect", "singer", "chemist", "pilot"]
_AWARDS = ["Silver Prize", "Golden Medal", "River Award", "Crown Ribbon", "Star Cup",
           "Harbor Prize", "Lantern Award", "Oak Medal"]
_HOBBIES = ["chess", "gardening", "fishing", "long walks", "old maps", "folk music", "rowing"]
_PETS = ["cats", "dogs", "goats", "parrots", "horses"]
_WEATHER = ["rainy", "windy", "sunny", "cold", "foggy"]


def _summarize_example(rng: random.Random) -> Example:
    w = _world()
    name, city = _person(rng), rng.choice(w["cities"])
    prof, award = rng.choice(_PROFESSIONS), rng.choice(_AWARDS)
    pron = rng.choice(["She", "He"])
    born, won = rng.randint(1900, 1980), None
    won = born + rng.randint(20, 45)
    art = "an" if prof[0] in "aeiou" else "a"
    facts = [f"{name} is {art} {prof} from {city}.", f"In {won}, {name} won the {award}."]
    extras = [f"{pron} was born in {born}.", f"{pron} enjoys {rng.choice(_HOBBIES)}.",
              f"{pron} has {rng.randint(2, 9)} {rng.choice(_PETS)}.",
              f"The weather in {city} is often {rng.choice(_WEATHER)}."]
    rng.shuffle(extras)
    sents = facts + extras[: rng.randint(1, 3)]
    # The identity sentence stays first (as in news leads); the rest is shuffled.
    rest = sents[1:]
    rng.shuffle(rest)
    doc = " ".join([sents[0]] + rest)
    summary = f"{name}, {art} {prof} from {city}, won the {award}."
    return {"document": doc, "summary": summary, "_key": doc}


# ----------------------------------------------------------------------------- nli
_NOUNS = ["man", "woman", "child", "dog", "girl", "boy", "farmer", "student", "cat", "musician"]
_ADJS = ["tall", "young", "old", "small", "happy", "tired", "quiet", "brave"]
_VERBS = ["running", "sleeping", "eating", "singing", "reading", "dancing", "swimming", "sitting"]
_PLACES = {"park": "outside", "garden": "outside", "street": "outside", "beach": "outside",
           "kitchen": "inside", "library": "inside", "hall": "inside", "office": "inside"}
_EXTRAS = ["with a friend", "for an hour", "before lunch", "after work", "near a tree",
           "with great joy"]
NLI_LABELS = ["entailment", "neutral", "contradiction"]


def _nli_example(rng: random.Random) -> Example:
    noun, adj, verb = rng.choice(_NOUNS), rng.choice(_ADJS), rng.choice(_VERBS)
    places = list(_PLACES)
    place = rng.choice(places)
    premise = f"The {adj} {noun} is {verb} in the {place}."
    label = rng.choice(NLI_LABELS)
    kind = rng.randint(0, 2)
    if label == "entailment":
        hyp = [f"A {noun} is {verb} in the {place}.",
               f"The {adj} {noun} is {verb} {_PLACES[place]}.",
               f"A {noun} is {verb}."][kind]
    elif label == "contradiction":
        other_verb = rng.choice([v for v in _VERBS if v != verb])
        other_place = rng.choice([p for p in places if _PLACES[p] != _PLACES[place]])
        opposite = "inside" if _PLACES[place] == "outside" else "outside"
        hyp = [f"The {adj} {noun} is {other_verb} in the {place}.",
               f"The {adj} {noun} is {verb} in the {other_place}.",
               f"The {adj} {noun} is {verb} {opposite}."][kind]
    else:
        other_adj = rng.choice([a for a in _ADJS if a != adj])
        hyp = [f"The {adj} {noun} is {verb} in the {place} {rng.choice(_EXTRAS)}.",
               f"The {adj} and {other_adj} {noun} is {verb} in the {place}.",
               f"The {adj} {noun} is {verb} {rng.choice(_EXTRAS)}."][kind]
    return {"premise": premise, "hypothesis": hyp, "label": label,
            "_key": premise + " || " + hyp}


# ----------------------------------------------------------------------------- scan
_PRIMS = {"walk": "WALK", "look": "LOOK", "run": "RUN", "jump": "JUMP"}
_DIRS = {"left": "LTURN", "right": "RTURN"}


def _scan_verb(rng: random.Random) -> tuple[str, list[str]]:
    """V -> D opposite D | D around D | D | U (SCAN grammar, Lake & Baroni 2018)."""
    kind = rng.choice(["u", "d", "d", "opposite", "around"])
    prim = rng.choice(list(_PRIMS) + ["turn"])
    if kind == "u":
        if prim == "turn":
            prim = rng.choice(list(_PRIMS))
        return prim, [_PRIMS[prim]]
    d = rng.choice(list(_DIRS))
    turn = _DIRS[d]
    act = [] if prim == "turn" else [_PRIMS[prim]]
    if kind == "d":
        return f"{prim} {d}", [turn] + act
    if kind == "opposite":
        return f"{prim} opposite {d}", [turn, turn] + act
    return f"{prim} around {d}", ([turn] + act) * 4


def _scan_phrase(rng: random.Random) -> tuple[str, list[str]]:
    cmd, act = _scan_verb(rng)
    rep = rng.choice(["", "", "twice", "thrice"])
    if rep:
        return f"{cmd} {rep}", act * (2 if rep == "twice" else 3)
    return cmd, act


def _scan_example(rng: random.Random) -> Example:
    while True:
        c1, a1 = _scan_phrase(rng)
        conj = rng.choice(["", "and", "after"])
        if conj:
            c2, a2 = _scan_phrase(rng)
            cmd = f"{c1} {conj} {c2}"
            act = a1 + a2 if conj == "and" else a2 + a1
        else:
            cmd, act = c1, a1
        if len(act) <= 24:  # keeps targets < 32 tokens
            return {"command": cmd, "actions": " ".join(act), "_key": cmd}


# ----------------------------------------------------------------------------- cbqa
_RELATIONS = {
    "capital": (["What is the capital of {c}?", "Name the capital city of {c}.",
                 "Which city is the capital of {c}?", "{c} has its capital in which city?",
                 "Where is the seat of government of {c}?"],
                ["The capital of {c} is which city?"]),
    "language": (["What language is spoken in {c}?", "Which language do people in {c} speak?",
                  "Name the main language of {c}.", "People in {c} mostly speak what?",
                  "What is the official language of {c}?"],
                 ["The language of {c} is what?"]),
    "currency": (["What is the currency of {c}?", "Which money is used in {c}?",
                  "Name the currency of {c}.", "People in {c} pay with what?",
                  "What coin is used in {c}?"],
                 ["The currency of {c} is called what?"]),
}


@functools.lru_cache(maxsize=None)
def cbqa_facts() -> list[tuple[str, str, str]]:
    """The fixed fact table: (country, relation, answer)."""
    rng = random.Random(SEED + 4)
    w = _world()
    facts = []
    for i, c in enumerate(w["countries"]):
        facts.append((c, "capital", w["cities"][i]))
        facts.append((c, "language", rng.choice(w["languages"])))
        facts.append((c, "currency", rng.choice(w["currencies"])))
    return facts


def _cbqa() -> dict[str, list[Example]]:
    rng = random.Random(SEED + 3)
    facts = cbqa_facts()
    # Most facts appear in train under several phrasings; validation asks about facts seen in
    # train with a held-out phrasing, so the task measures recall of memorised facts.
    train = []
    for c, rel, ans in facts:
        templates = _RELATIONS[rel][0]
        for t in rng.sample(templates, len(templates)):
            train.append({"question": t.format(c=c), "answer": ans})
    rng.shuffle(train)
    val = []
    for c, rel, ans in rng.sample(facts, NUM_VALIDATION):
        val.append({"question": _RELATIONS[rel][1][0].format(c=c), "answer": ans})
    return {"train": train[: NUM_TRAIN], "validation": val}


# ----------------------------------------------------------------------------- rc
_SHOPS = ["bakery", "bookshop", "workshop", "tea house", "museum", "school", "theatre", "mill"]
_PRODUCTS = ["bread", "old books", "clocks", "green tea", "paintings", "music", "puppets",
             "flour"]


def _rc_example(rng: random.Random) -> Example:
    w = _world()
    p1, p2 = _person(rng), _person(rng)
    while p2 == p1:
        p2 = _person(rng)
    shop, city = rng.choice(_SHOPS), rng.choice(w["cities"])
    product = rng.choice(_PRODUCTS)
    year, price = rng.randint(1800, 1990), rng.randint(2, 99) * 10
    later = year + rng.randint(5, 30)
    sents = [f"{p1} opened a {shop} in {city} in {year}.",
             f"In {later}, {p2} bought it for {price} coins.",
             f"The {shop} is famous for its {product}."]
    qas = [(f"Who opened the {shop}?", [p1]),
           (f"Where was the {shop} opened?", [city]),
           (f"When did {p1} open the {shop}?", [str(year)]),
           (f"Who bought the {shop}?", [p2]),
           (f"How much did {p2} pay for the {shop}?", [f"{price} coins", str(price)]),
           (f"What is the {shop} famous for?", [product, f"its {product}"]),
           (f"When was the {shop} sold?", [str(later)])]
    q, answers = rng.choice(qas)
    context = " ".join(sents)
    return {"question": q, "context": context, "answers": answers, "answer": answers[0],
            "_key": q + " " + context}


# ----------------------------------------------------------------------------- classify
_TOPICS = {
    "sports": (["the striker", "the coach", "the goalkeeper", "the home team", "the runner"],
               ["scored twice in", "celebrated", "trained hard for", "lost", "won"],
               ["the final match", "the league title", "the cup", "the marathon", "the derby"]),
    "science": (["the researchers", "the lab", "the physicist", "the biologist", "the team of chemists"],
                ["published", "measured", "discovered", "tested", "observed"],
                ["a new molecule", "the gene", "a distant galaxy", "the experiment", "the fossil"]),
    "business": (["the company", "the bank", "investors", "the retailer", "the startup"],
                 ["reported", "raised", "cut", "announced", "doubled"],
                 ["quarterly profits", "its prices", "the merger", "new shares", "its revenue"]),
    "food": (["the chef", "the restaurant", "the baker", "the cook", "the farmers market"],
             ["served", "roasted", "baked", "seasoned", "prepared"],
             ["a spicy soup", "fresh bread", "the lamb", "a lemon cake", "the vegetables"]),
}
_TIMES = ["", " on Monday", " last week", " this morning", " again", " in the spring"]
_PRODUCTS_REVIEWED = ["phone", "film", "hotel", "book", "chair", "meal", "concert", "game"]
_POS = ["great", "wonderful", "lovely", "excellent", "pleasant"]
_NEG = ["awful", "boring", "terrible", "broken", "disappointing"]
CLASSIFY_LABELS = list(_TOPICS) + ["positive", "negative"]


def _classify_example(rng: random.Random) -> Example:
    if rng.random() < 0.6:
        label = rng.choice(list(_TOPICS))
        subj, verb, obj = (rng.choice(x) for x in _TOPICS[label])
        text = f"{subj.capitalize()} {verb} {obj}{rng.choice(_TIMES)}."
        if rng.random() < 0.5:
            s2, v2, o2 = (rng.choice(x) for x in _TOPICS[label])
            text += f" Later, {s2} {v2} {o2}."
        return {"text": text, "label": label, "kind": "topic", "_key": "topic " + text}
    positive = rng.random() < 0.5
    negated = rng.random() < 0.3
    words = _NEG if positive == negated else _POS
    adj = rng.choice(words)
    thing = rng.choice(_PRODUCTS_REVIEWED)
    text = f"The {thing} was {'not ' if negated else ''}{adj}."
    if rng.random() < 0.5:
        text += f" I {'would' if positive else 'would not'} recommend it."
    label = "positive" if positive else "negative"
    return {"text": text, "label": label, "kind": "sentiment", "_key": "sentiment " + text}


# ----------------------------------------------------------------------------- corpus
def _corpus() -> dict[str, list[Example]]:
    """Plain documents for span corruption: prose built from the same world as the tasks."""
    rng = random.Random(SEED + 7)
    facts = cbqa_facts()
    docs = []
    for _ in range(NUM_TRAIN + NUM_VALIDATION):
        parts = []
        while sum(len(p.split()) for p in parts) < rng.randint(40, 90):
            kind = rng.randint(0, 3)
            if kind == 0:
                parts.append(_summarize_example(rng)["document"])
            elif kind == 1:
                parts.append(_rc_example(rng)["context"])
            elif kind == 2:
                parts.append(_classify_example(rng)["text"])
            else:
                c, rel, ans = rng.choice(facts)
                parts.append(f"The {rel} of {c} is {ans}.")
        docs.append({"text": " ".join(parts)})
    return {"validation": docs[:NUM_VALIDATION], "train": docs[NUM_VALIDATION:]}


# ----------------------------------------------------------------------------- public
_SIMPLE = {
    "summarize": (_summarize_example, 1),
    "nli": (_nli_example, 2),
    "scan": (_scan_example, 5),
    "rc": (_rc_example, 6),
    "classify": (_classify_example, 8),
}
FAMILIES = ("summarize", "nli", "scan", "cbqa", "rc", "classify", "span_corruption")


@functools.lru_cache(maxsize=None)
def generate(family: str) -> dict[str, list[Example]]:
    """{'train': [...], 'validation': [...]} for one family; cached, deterministic."""
    if family in _SIMPLE:
        make, offset = _SIMPLE[family]
        rng = random.Random(SEED + offset)
        return _split(_dedup(rng, make, NUM_TRAIN + NUM_VALIDATION))
    if family == "cbqa":
        return _cbqa()
    if family == "span_corruption":
        return _corpus()
    raise ValueError(f"unknown local family {family!r}; known: {', '.join(FAMILIES)}")


def corpus_text() -> list[str]:
    """Every string in every family and split (what the SentencePiece model is trained on)."""
    out = []
    for fam in FAMILIES:
        for split in ("train", "validation"):
            for ex in generate(fam)[split]:
                for v in ex.values():
                    if isinstance(v, str):
                        out.append(v)
                    elif isinstance(v, list):
                        out.extend(v)
    return out
