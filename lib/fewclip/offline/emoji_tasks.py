"""Emoji tasks on the styles pretraining never sees (OpenMoji colour, Noto mono).

All are built from ``emoji-corpus/emoji.jsonl`` and point at the corpus images (no copies):

- ``emoji_{openmoji,noto}_category``: the base picture of every emoji, by category; per
  class 40% train (>= 16), 10% val (>= 4), the rest test.
- ``emoji_{openmoji,noto}_subcategory``: the same by subcategory, keeping subcategories that
  can give 16 train + 4 val + 10 test (>= 30 emoji); test capped at 60 per class so that
  the 259 country flags do not dominate.
- ``emoji_unseen_subcategory``: both unseen styles; an emoji's two pictures are one group
  (never split between train and test); subcategories that give 16 train + 4 val + 10
  test pictures (about 15 emoji).
- ``emoji_{openmoji,noto}_name``: every name a font draws, one picture each: zero-shot
  only (test split only). ``extra`` lists held-out (new) and seen (base) labels.
- ``emoji_unseen_name``: names that have skin tones. Train: OpenMoji skin-tone variants
  (4, or 24 for the two-person emoji), val: one variant, test: the default OpenMoji
  picture and the Noto picture. At most 4 shots.
- ``emoji_name_b2n``: base-to-new on names: the held-out names of ``emoji_unseen_name``
  (new) and as many seen names drawn with the seed (base); labels ``[0, n/2)`` are base, the
  rest new, so CoOp's "first half is base" rule and ``extra`` agree.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from ..data.base import Datum
from .corpus import CORPUS_DIR, EVAL_STYLES, HELDOUT_RULE, read_corpus_records
from .tasks import SplitRule, allocate, class_rng, write_task

CATEGORY_RULE = SplitRule(train_frac=0.4, val_frac=0.1, min_train=16, min_val=4, min_test=10)
SUBCATEGORY_RULE = SplitRule(
    train_frac=0.4, val_frac=0.1, min_train=16, min_val=4, min_test=10, max_test=60
)
B2N_RULE = SplitRule(
    train_frac=0.4, val_frac=0.1, min_train=16, min_val=4, min_test=10, max_test=60
)
#: a name task needs at least this many skin-tone variants (train + val)
MIN_TONES = 5
#: held-out style -> the spelling in task names
STYLE_TASK_NAMES = {
    "openmoji": "openmoji",
    "noto": "noto",
    "fluent-flat": "fluent_flat",
    "fluent-mono": "fluent_mono",
}
#: the domain-generalisation family: a pretraining style (the in-distribution source, the
#: analogue of ImageNet) and the held-out styles; the mono Noto font lacks most person
#: sequences, so it is a test-only target
DG_STYLES = ("twitter", "openmoji", "fluent-flat", "fluent-mono", "noto")
DG_TEST_ONLY = ("noto",)
DG_HOW = (
    "domain generalisation: the same subcategories in every style of "
    + ", ".join(DG_STYLES)
    + "; base picture per emoji; per class 40% train (>= 16), 10% val (>= 4), test <= 60; "
    "noto: test only"
)


def readable_category(category: str) -> str:
    """``"Smileys & Emotion"`` -> ``"smileys and emotion"``."""
    return " ".join(category.replace("&", "and").lower().split())


def readable_subcategory(sub: str) -> str:
    """``"animal-mammal"`` -> ``"animal mammal"``, as pretraining captions spell it."""
    return " ".join(sub.replace("_", " ").replace("-", " ").split())


def _grouped_task(
    records: list[dict],
    task: str,
    styles: tuple[str, ...],
    key: Callable[[dict], str],
    readable: Callable[[str], str],
    rule: SplitRule,
    seed: int,
    corpus: Path,
) -> tuple[list[str], dict[str, list[Datum]], dict]:
    """Classes by ``key``; each emoji's base pictures in ``styles`` form one group."""
    by_class: dict[str, list[list[str]]] = defaultdict(list)
    for r in records:
        group = [r["images"][s][0] for s in styles if r["images"].get(s)]
        if group:
            by_class[key(r)].append(group)
    classnames: list[str] = []
    splits: dict[str, list[Datum]] = {"train": [], "val": [], "test": []}
    dropped = {}
    for cls, groups in by_class.items():  # first-appearance (emoji sort) order
        parts = allocate(groups, rule, class_rng(seed, task, cls))
        if parts is None:
            dropped[cls] = sum(len(g) for g in groups)
            continue
        label = len(classnames)
        classnames.append(readable(cls))
        for split, paths in zip(("train", "val", "test"), parts, strict=True):
            splits[split] += [Datum(str(corpus / p), label, classnames[-1]) for p in paths]
    extra = {"original_names": [c for c in by_class if c not in dropped], "dropped": dropped}
    return classnames, splits, extra


def _heldout_extra(records: list[dict]) -> dict:
    new = [i for i, r in enumerate(records) if r["heldout"]]
    base = [i for i, r in enumerate(records) if not r["heldout"]]
    return {
        "ids": [r["id"] for r in records],
        "base_labels": base,
        "new_labels": new,
        "heldout_rule": HELDOUT_RULE,
    }


def _zero_shot_names(records: list[dict], style: str, corpus: Path):
    present = [r for r in records if r["images"].get(style)]
    classnames = [r["name"] for r in present]
    test = [Datum(str(corpus / r["images"][style][0]), i, r["name"]) for i, r in enumerate(present)]
    return classnames, {"train": [], "val": [], "test": test}, _heldout_extra(present)


def _tone_names(records: list[dict], seed: int, task: str, corpus: Path, chosen: list[dict]):
    """Train on OpenMoji skin-tone variants, val one variant, test default + Noto pictures."""
    classnames = [r["name"] for r in chosen]
    splits: dict[str, list[Datum]] = {"train": [], "val": [], "test": []}
    for label, r in enumerate(chosen):
        base, *variants = r["images"]["openmoji"]
        variants = list(variants)
        class_rng(seed, task, r["id"]).shuffle(variants)
        test = [base] + r["images"].get("noto", [])[:1]
        for split, paths in (("train", variants[1:]), ("val", variants[:1]), ("test", test)):
            splits[split] += [Datum(str(corpus / p), label, r["name"]) for p in paths]
    return classnames, splits, _heldout_extra(chosen)


def tone_candidates(records: list[dict]) -> list[dict]:
    """Emoji whose OpenMoji style has the base and at least ``MIN_TONES`` variants."""
    return [r for r in records if len(r["images"].get("openmoji", [])) >= 1 + MIN_TONES]


def b2n_classes(records: list[dict], seed: int) -> list[dict]:
    """New = held-out candidates; base = as many seen candidates drawn with ``seed``."""
    candidates = tone_candidates(records)
    new = [r for r in candidates if r["heldout"]]
    seen = [r for r in candidates if not r["heldout"]]
    draw = random.Random(f"{seed}:emoji_name_b2n")
    picked = {r["id"] for r in draw.sample(seen, min(len(new), len(seen)))}
    base = [r for r in seen if r["id"] in picked]
    return base + new


def build_emoji_tasks(
    data_root: str | Path,
    seed: int,
    info: Callable[[str], dict],
    log: Callable[[str], None] = print,
) -> dict[str, dict]:
    """Write every emoji task whose styles the corpus has; returns name -> task record.

    ``info(task)`` gives the task's ``seed``/``sources``/``inputs`` block for task.json.
    """
    data_root = Path(data_root)
    corpus = data_root / CORPUS_DIR
    records = read_corpus_records(corpus)
    have = {s for r in records for s in r["images"]}
    built: dict[str, dict] = {}

    def emit(task: str, classnames, splits, extra, how: str) -> None:
        if not classnames:
            log(f"  skip {task}: no class has enough images")
            return
        meta = {**info(task), "built": how, "extra": extra}
        record = write_task(data_root, task, classnames, splits, corpus, meta)
        built[task] = record
        log(f"  {task}: {record['num_classes']} classes, {record['counts']}")

    for style, slug in STYLE_TASK_NAMES.items():
        if style not in have:
            log(f"  skip emoji_{slug}_*: the corpus has no {style} images (source not fetched)")
            continue
        for kind, key, readable, rule in (
            ("category", lambda r: r["category"], readable_category, CATEGORY_RULE),
            ("subcategory", lambda r: r["subcategory"], readable_subcategory, SUBCATEGORY_RULE),
        ):
            task = f"emoji_{slug}_{kind}"
            classnames, splits, extra = _grouped_task(
                records, task, (style,), key, readable, rule, seed, corpus
            )
            emit(task, classnames, splits, extra, f"base {style} picture per emoji; {rule}")
        task = f"emoji_{slug}_name"
        emit(
            task,
            *_zero_shot_names(records, style, corpus),
            f"one base {style} picture per name, test only (zero-shot)",
        )

    if {"openmoji", "noto"} <= have:
        task = "emoji_unseen_subcategory"
        rule = SplitRule(0.4, 0.1, min_train=16, min_val=4, min_test=10, max_test=60)
        classnames, splits, extra = _grouped_task(
            records,
            task,
            ("openmoji", "noto"),
            lambda r: r["subcategory"],
            readable_subcategory,
            rule,
            seed,
            corpus,
        )
        emit(task, classnames, splits, extra, f"openmoji+noto, grouped by emoji; {rule}")
    else:
        log("  skip emoji_unseen_subcategory: needs both openmoji and noto images")

    if "openmoji" in have:
        how = (
            f"names with >= {MIN_TONES} OpenMoji skin-tone variants: train = variants but one, "
            "val = one variant, test = default OpenMoji + Noto picture"
        )
        task = "emoji_unseen_name"
        emit(task, *_tone_names(records, seed, task, corpus, tone_candidates(records)), how)
        task = "emoji_name_b2n"
        chosen = b2n_classes(records, seed)
        classnames, splits, extra = _tone_names(records, seed, task, corpus, chosen)
        extra["protocol"] = "labels [0, n/2) base (seen in pretraining), [n/2, n) new (held out)"
        emit(task, classnames, splits, extra, how + "; new = held-out names, base = as many seen")
    else:
        log("  skip emoji_unseen_name, emoji_name_b2n: need openmoji images")

    dg_styles = [s for s in DG_STYLES if s in have]
    if len(dg_styles) >= 2:
        for task, (classnames, splits, extra) in _dg_tasks(
            records, dg_styles, seed, corpus
        ).items():
            emit(task, classnames, splits, extra, DG_HOW)
    else:
        log("  skip emoji_dg_*: needs at least two of " + ", ".join(DG_STYLES))

    b2n_styles = tuple(s for s in EVAL_STYLES if s in have)
    if b2n_styles:
        task = "emoji_subcategory_b2n"
        classnames, splits, extra = _grouped_task(
            records,
            task,
            b2n_styles,
            lambda r: r["subcategory"],
            readable_subcategory,
            B2N_RULE,
            seed,
            corpus,
        )
        classnames, splits, extra = _shuffle_labels(classnames, splits, extra, seed, task)
        extra["styles"] = list(b2n_styles)
        extra["protocol"] = "CoOp's rule: labels [0, ceil(n/2)) base, the rest new"
        emit(
            task,
            classnames,
            splits,
            extra,
            f"{'+'.join(b2n_styles)}, grouped by emoji, classes in seeded order; {B2N_RULE}",
        )
    return built


def _shuffle_labels(classnames, splits, extra, seed: int, task: str):
    """Relabel classes in a seeded order, so base/new halves do not follow the category
    order of the emoji list."""
    order = list(range(len(classnames)))
    random.Random(f"{seed}:{task}:labels").shuffle(order)
    new_label = {old: new for new, old in enumerate(order)}
    names = [classnames[i] for i in order]
    out = {
        split: sorted(
            (Datum(d.impath, new_label[d.label], d.classname) for d in items),
            key=lambda d: (d.label, d.impath),
        )
        for split, items in splits.items()
    }
    n_base = (len(names) + 1) // 2
    extra = {
        **extra,
        "original_names": [extra["original_names"][i] for i in order],
        "base_labels": list(range(n_base)),
        "new_labels": list(range(n_base, len(names))),
    }
    return names, out, extra


def _dg_tasks(
    records: list[dict], styles: list[str], seed: int, corpus: Path
) -> dict[str, tuple[list[str], dict[str, list[Datum]], dict]]:
    """The domain-generalisation family: one task per style, the same classes in the same
    order (subcategories that every style but the test-only ones can split with
    :data:`SUBCATEGORY_RULE`); a class's emoji are shuffled once (seeded by class, not by
    style), so an emoji falls in the same split in every style that draws it."""
    by_class: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        by_class[r["subcategory"]].append(r)
    rule = SUBCATEGORY_RULE
    chosen: dict[str, dict[str, tuple[list[str], list[str], list[str]]]] = {}
    for cls, members in by_class.items():
        order = list(members)
        class_rng(seed, "emoji_dg", cls).shuffle(order)
        per_style = {}
        for style in styles:
            pics = [r["images"][style][0] for r in order if r["images"].get(style)]
            if style in DG_TEST_ONLY:
                parts = ([], [], pics[: rule.max_test]) if len(pics) >= rule.min_test else None
            else:
                parts = _in_order(pics, rule)
            if parts is None:
                break
            per_style[style] = parts
        else:
            chosen[cls] = per_style
    classnames = [readable_subcategory(c) for c in chosen]
    out = {}
    for style in styles:
        splits: dict[str, list[Datum]] = {"train": [], "val": [], "test": []}
        for label, per_style in enumerate(chosen.values()):
            for split, paths in zip(("train", "val", "test"), per_style[style], strict=True):
                splits[split] += [Datum(str(corpus / p), label, classnames[label]) for p in paths]
        extra = {
            "style": style,
            "dg_family": [f"emoji_dg_{STYLE_TASK_NAMES.get(s, s)}" for s in styles],
            "original_names": list(chosen),
            "test_only": style in DG_TEST_ONLY,
        }
        out[f"emoji_dg_{STYLE_TASK_NAMES.get(style, style)}"] = (classnames, splits, extra)
    return out


def _in_order(pics: list[str], rule: SplitRule):
    """:func:`allocate` without its shuffle (the order is already seeded)."""
    return allocate([[p] for p in pics], rule, _NoShuffle())


class _NoShuffle(random.Random):
    def shuffle(self, x) -> None:  # type: ignore[override]
        return None
