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

The init phrase of a prompt learner resolves as for CoOp (:func:`resolve_phrase`):
``"backbone"``: the backbone's own phrase, ``"official"``: "a photo of a", any other
string: itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..backbones import BACKBONE_WORDS, OFFICIAL_WORDS, OPENAI_WORDS, init_phrase
from ..data.templates import SINGLE_TEMPLATES

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


def resolve_phrase(backbone, init: str | None) -> str | None:
    """An init option -> the phrase (:func:`fewclip.backbones.init_phrase`): "backbone" (its
    own words), "official" ("a photo of a"), None (random context) or a phrase (itself)."""
    return init_phrase(backbone.words, init)


def template_reads_backbone(dataset: str | None, template: str | None, table: dict) -> bool:
    """Whether :func:`dataset_template` takes the backbone's own template."""
    if template is None:
        return dataset not in table and dataset not in SINGLE_TEMPLATES
    return template == BACKBONE_WORDS


def dataset_template(
    backbone, dataset: str | None, template: str | None, table: dict[str, str]
) -> str:
    """The hand-crafted template of a run.

    template: None -> the official per-dataset template (``table``, else CoOp's single
    template) for the benchmark datasets, the backbone's own template for any other
    dataset; "backbone" / "official" -> those words; else the given template ("{}" once).
    """
    if template_reads_backbone(dataset, template, table):
        return backbone.words.template
    if template is None:
        return table[dataset] if dataset in table else SINGLE_TEMPLATES[dataset][0]
    if template == OFFICIAL_WORDS:
        return OPENAI_WORDS.template
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
