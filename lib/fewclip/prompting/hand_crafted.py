"""Hand-crafted prompts as the text-side peers of CoOp use them (KgCoOp, ProGrad).

KgCoOp keeps the learned prompt near the frozen-CLIP feature of a hand-crafted prompt,
ProGrad keeps its gradient aligned with the zero-shot prediction of one: both need the
frozen text features

    w_c = norm(g(tokenize(template.format(c))))                       (C, d)

of one hand-crafted template per dataset. The official codes take it from a per-dataset
table (``CUSTOM_TEMPLATES``); KgCoOp's is CoOp's zero-shot table, ProGrad's differs for
five datasets (:data:`PROGRAD_TEMPLATES`). A dataset outside those tables (fewclip's
offline tasks, a user's folder) gets the backbone's own template (``Backbone.words``:
"a photo of a {}." for OpenAI CLIP, the pretraining caption form for a checkpoint that
declares one), which is also what ``template="backbone"`` asks for everywhere.

The init phrase of a prompt learner resolves the same way (:func:`resolve_phrase`):
``"backbone"``: the backbone's own phrase, ``"official"``: "a photo of a", any other
string: itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..data.templates import SINGLE_TEMPLATES

#: OpenAI CLIP's words, as the official prompt-learning codes speak to it.
OFFICIAL_TEMPLATE = "a photo of a {}."
OFFICIAL_PHRASE = "a photo of a"
#: Option values: the backbone's own words / the official codes' words.
BACKBONE = "backbone"
OFFICIAL = "official"

#: KgCoOp's CUSTOM_TEMPLATES where they differ from CoOp's single templates.
KGCOOP_TEMPLATES: dict[str, str] = {"dtd": "a photo of a {}, a type of texture."}
#: ProGrad's CUSTOM_TEMPLATES where they differ from CoOp's single templates.
PROGRAD_TEMPLATES: dict[str, str] = {
    "oxford_pets": "a type of pet, a photo of a {}.",
    "oxford_flowers": "a type of flower, a photo of a {}.",
    "fgvc_aircraft": "a type of aircraft, a photo of a {}.",
    "dtd": "a texture of {}.",
    "food101": "a type of food, a photo of {}.",
}


def backbone_words(backbone) -> tuple[str, str]:
    """(template, init phrase) the backbone was pretrained with (``Backbone.words`` where the
    backbone declares them, else OpenAI CLIP's "a photo of a {}." / "a photo of a")."""
    words = getattr(backbone, "words", None)
    if words is None:
        return OFFICIAL_TEMPLATE, OFFICIAL_PHRASE
    return words.template, words.init


def resolve_phrase(backbone, init: str | None) -> str | None:
    """An init option -> the phrase: "backbone" (its own), "official" ("a photo of a"),
    None (random context) or a phrase (itself)."""
    if init == BACKBONE:
        return backbone_words(backbone)[1]
    if init == OFFICIAL:
        return OFFICIAL_PHRASE
    return init


def dataset_template(
    backbone, dataset: str | None, template: str | None, table: dict[str, str]
) -> str:
    """The hand-crafted template of a run.

    template: None -> the official per-dataset template (``table``, else CoOp's single
    template) for the benchmark datasets, the backbone's own template for any other
    dataset; "backbone" / "official" -> those words; else the given template ("{}" once).
    """
    if template is None:
        if dataset in table:
            return table[dataset]
        if dataset in SINGLE_TEMPLATES:
            return SINGLE_TEMPLATES[dataset][0]
        return backbone_words(backbone)[0]
    if template == BACKBONE:
        return backbone_words(backbone)[0]
    if template == OFFICIAL:
        return OFFICIAL_TEMPLATE
    if template.count("{}") != 1:
        raise ValueError(
            f"template {template!r} must contain '{{}}' exactly once, where the class name "
            "goes (e.g. 'a photo of a {}.')"
        )
    return template


def template_phrase(template: str) -> str:
    """ProGrad's init phrase of a template: the template without " {}." ("a photo of a")."""
    return template.replace(" {}.", "").replace("{}", "").strip().replace("_", " ")


@torch.no_grad()
def hand_crafted_features(backbone, classnames: Sequence[str], template: str) -> torch.Tensor:
    """(C, d) normalised frozen text features of ``template`` filled with each class name."""
    return backbone.encode_text([template.format(name) for name in classnames])
