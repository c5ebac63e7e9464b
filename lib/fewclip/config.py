"""One configuration object per run, built from notebook parameters or the CLI.

Every result row carries its :class:`RunConfig` (as JSON) and a run key: a hash of the
fields that determine the result plus the identity of the backbone weights and the
content of the dataset. Fields that only say *where* or *how fast* (data root, cache
folder, device, worker count) are not part of the key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any

from .validation import check_fields

PROTOCOLS = ("few_shot", "base_to_new", "cross_dataset", "domain_generalisation")
SELECTIONS = ("val", "test")
VAL_SPLITS = ("few_shot", "full", "none")  # as fewclip.data.fewshot.VAL_SPLITS
# set by the report builder: banners then name no path of the build machine
PUBLISHED_ROOT_VAR = "FEWCLIP_PUBLISHED_REPORT"

#: Environment variable naming the default data root (else ``data``).
DATA_ROOT_VAR = "FEWCLIP_DATA"


def default_data_root() -> str:
    """The data root used when none is given: ``$FEWCLIP_DATA`` if set and not empty, else
    ``"data"`` (relative to the working directory, or to the project root in notebooks)."""
    return os.environ.get(DATA_ROOT_VAR) or "data"


#: Fields that do not change a result, left out of the run key.
NON_RESULT_FIELDS = ("data_root", "cache_dir", "device", "num_workers", "progress")


@dataclass
class RunConfig:
    """A single (method, dataset, backbone, shots, seed, options) configuration.

    selection: ``"val"`` (default, leak-free): epoch selection and hyper-parameter search
        see only the few-shot validation split. ``"test"`` reproduces the official
        Tip-Adapter code, which selects on the test set; results are labelled as such.
    reader_options: passed to the dataset reader, e.g. ``{"val_is_test": True}`` for
        ImageNet reproduces the official DualAdapter code (val = test).
    eval_datasets: for cross-dataset and domain-generalisation protocols, the datasets
        evaluated after training on ``dataset``.
    val: ``"few_shot"`` (default, CoOp's min(K, 4) val images per class: the realistic
        few-shot setting) or ``"full"`` (the whole val split, as the official Tip-Adapter
        and DualAdapter codes select outside ImageNet) or ``"none"`` (no validation data at
        all: a method runs its documented fixed setting, its ``no_val_options``, and a
        method that needs validation data refuses). Recorded in every record and part of
        the run key.
    data_root: where the datasets are; by default ``$FEWCLIP_DATA``, else ``data``
        (:func:`default_data_root`). Not part of the run key.
    label_noise: probability that each few-shot training label is replaced by a uniformly
        drawn other class (SimNL's noisy-label protocol; 0 = clean). Seeded by ``seed``,
        cached with the sample, usable with every method; val stays clean.
    """

    method: str = "zero_shot"
    dataset: str = "emoji_openmoji_subcategory"
    backbone: str = "tiny-emoji-rn"
    pretrained: str | None = "default"
    shots: int = 16
    seed: int = 1
    protocol: str = "few_shot"
    options: dict[str, Any] = field(default_factory=dict)
    variant: str = ""  # a free label for ablations ("positive only", ...)
    augment_views: int = 10
    selection: str = "val"
    templates: list[str] | str | None = None  # a list, or a style: "default", "single", "apex"
    descriptions: str | None = None  # path to a CuPL-style description JSON
    reader_options: dict[str, Any] = field(default_factory=dict)
    eval_datasets: list[str] = field(default_factory=list)
    allow_fewer: bool = False
    val: str = "few_shot"
    label_noise: float = 0.0
    data_root: str = field(default_factory=default_data_root)
    cache_dir: str = "cache"
    device: str = "auto"
    num_workers: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        # every field's type first (shots="4", seed=1.0, ... name the field), then values
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        checked = check_fields("RunConfig", type(self), values)
        for name, value in checked.items():
            setattr(self, name, value)
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {self.protocol!r}; choose one of {PROTOCOLS}")
        if self.selection not in SELECTIONS:
            raise ValueError(f"unknown selection {self.selection!r}; choose one of {SELECTIONS}")
        if self.shots < 0:
            raise ValueError(
                f"shots must be >= 0 (0: zero-shot), got {self.shots}; a run uses a K-shot "
                "sample (the full splits are fewclip.data.fewshot.few_shot_split(ds, -1, seed))"
            )
        if self.augment_views < 1:
            raise ValueError(f"augment_views must be >= 1, got {self.augment_views}")
        if self.val not in VAL_SPLITS:
            raise ValueError(f"unknown val {self.val!r}; choose one of {VAL_SPLITS}")
        if self.val == "none" and self.selection == "test":
            raise ValueError(
                "val='none' sees no validation data but selection='test' selects on the test "
                "set; use one of them"
            )
        if not 0.0 <= self.label_noise < 1.0:
            raise ValueError(f"label_noise must be a probability in [0, 1), got {self.label_noise}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown RunConfig field(s): {sorted(unknown)}")
        return cls(**d)

    def replace(self, **changes: Any) -> RunConfig:
        return dataclasses.replace(self, **changes)

    def result_fields(self) -> dict[str, Any]:
        d = self.to_dict()
        for k in NON_RESULT_FIELDS:
            d.pop(k)
        return d

    def run_key(self, backbone_identity: str, data_fingerprint: str) -> str:
        """Hash of the result-determining fields, the weights and the data."""
        payload = {
            "config": self.result_fields(),
            "backbone": backbone_identity,
            "data": data_fingerprint,
        }
        return hashlib.sha256(
            json.dumps(payload, sort_keys=True, default=str).encode()
        ).hexdigest()[:20]
