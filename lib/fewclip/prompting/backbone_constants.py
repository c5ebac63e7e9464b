"""Training constants relative to the backbone (docs/constants.md).

The prompt learners' augmentation is Dassl's random resized crop with area in
[0.08, 1] (:data:`fewclip.images.DASSL_CROP_SCALE`), tuned for OpenAI CLIP on 224-pixel
photos: OpenAI CLIP saw random square crops of whole photos in pretraining, and a crop of
8% of a photo still shows its object. A backbone that declares its own pretraining crop
(``Backbone.pretrain_crop_min``; fewclip's tiny emoji models: 0.6) has never seen
smaller crops, and on its small images a crop of 8% of the area is a few pixels of one
emoji, which it cannot name: training then fits views unlike every test image.

``crop_scale_min`` (an option of every encoder-level method):

    "backbone"  (default) [max(0.08, pretrain_crop_min), 1] where the backbone declares its
                pretraining crop, else Dassl's [0.08, 1] (OpenAI and LAION weights: the
                official augmentation, unchanged)
    "official"  Dassl's [0.08, 1] on any backbone
    a number    [that number, 1]
"""

from __future__ import annotations

from ..backbones import Backbone
from ..images import DASSL_CROP_SCALE

#: Option value: the crop range follows the backbone's pretraining crop.
BACKBONE_CROP = "backbone"
#: Option value: Dassl's crop range whatever the backbone.
OFFICIAL_CROP = "official"


def train_crop_scale(backbone: Backbone, crop_scale_min: str | float) -> tuple[float, float]:
    """The random-resized-crop area range (low, 1) of ``crop_scale_min`` on ``backbone``."""
    check_crop_option(crop_scale_min)
    if crop_scale_min == OFFICIAL_CROP:
        return DASSL_CROP_SCALE
    if crop_scale_min == BACKBONE_CROP:
        declared = backbone.pretrain_crop_min
        if declared is None:
            return DASSL_CROP_SCALE
        return (max(DASSL_CROP_SCALE[0], declared), DASSL_CROP_SCALE[1])
    return (float(crop_scale_min), DASSL_CROP_SCALE[1])


def check_crop_option(crop_scale_min: str | float) -> None:
    """One sentence naming the problem where ``crop_scale_min`` is not a valid option."""
    if crop_scale_min in (BACKBONE_CROP, OFFICIAL_CROP):
        return
    if isinstance(crop_scale_min, bool) or not isinstance(crop_scale_min, int | float):
        raise ValueError(
            f"crop_scale_min must be 'backbone', 'official' or a number in (0, 1], got "
            f"{crop_scale_min!r}"
        )
    if not 0 < crop_scale_min <= 1:
        raise ValueError(f"crop_scale_min must be in (0, 1], got {crop_scale_min}")
