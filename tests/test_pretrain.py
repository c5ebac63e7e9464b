"""Pretraining on a fake emoji corpus: learning, resuming, checkpoint round trip, evaluation."""

from __future__ import annotations

import dataclasses
import json
import random

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from fewclip.backbones import load_backbone, open_clip
from fewclip.pretrain.data import (
    CAPTION_TEMPLATES,
    GROUP_TEMPLATES,
    TRAIN_STYLES,
    Emoji,
    build_caption,
    build_training_set,
    read_corpus,
)
from fewclip.pretrain.evaluate import evaluate_backbone
from fewclip.pretrain.train import PretrainConfig, augment, clip_loss, pretrain

COLOURS = {
    "red circle": (220, 30, 30),
    "green leaf": (30, 200, 30),
    "blue sea": (30, 30, 220),
    "yellow sun": (240, 220, 20),
    "black cat": (10, 10, 10),
    "purple grapes": (140, 30, 160),
}


def make_corpus(root, styles=("google", "twitter", "openmoji")):
    """Each 'emoji' is a flat colour disc; styles differ in disc size."""
    corpus = root / "emoji-corpus"
    rows = []
    for i, (name, colour) in enumerate(COLOURS.items()):
        images = {}
        for s, style in enumerate(styles):
            (corpus / "images" / style).mkdir(parents=True, exist_ok=True)
            im = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
            arr = np.zeros((64, 64, 4), dtype=np.uint8)
            yy, xx = np.mgrid[:64, :64]
            r = 20 + 6 * s
            disc = (yy - 32) ** 2 + (xx - 32) ** 2 < r * r
            arr[disc] = (*colour, 255)
            im = Image.fromarray(arr, "RGBA")
            rel = f"images/{style}/{i}.png"
            im.save(corpus / rel)
            images[style] = [rel]
        rows.append(
            {
                "id": f"E{i}",
                "name": name,
                "short_names": [name.replace(" ", "_")],
                "category": "c",
                "subcategory": "sub",
                "heldout": i == len(COLOURS) - 1,
                "images": images,
            }
        )
    (corpus / "emoji.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return corpus


def test_corpus_reading_skips_heldout(tmp_path):
    corpus = make_corpus(tmp_path)
    assert len(read_corpus(corpus)) == len(COLOURS)
    data = build_training_set(corpus)
    assert [e.name for e in data.emoji] == list(COLOURS)[:-1]
    assert data.images.shape == (2 * (len(COLOURS) - 1), 3, 64, 64)  # google + twitter only
    images, captions = data.sample_batch(4, random.Random(0))
    assert images.shape == (4, 3, 64, 64) and len(set(captions)) == 4


def test_missing_corpus_names_the_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="fewclip.offline prepare"):
        read_corpus(tmp_path / "nope")


def test_augment_shapes_and_determinism():
    images = torch.randint(0, 256, (5, 3, 64, 64), dtype=torch.uint8)
    a = augment(images, 32, torch.Generator().manual_seed(1))
    b = augment(images, 32, torch.Generator().manual_seed(1))
    assert a.shape == (5, 3, 32, 32) and torch.equal(a, b)
    # a white image stays white (up to normalisation) whatever the crop
    white = torch.full((2, 3, 64, 64), 255, dtype=torch.uint8)
    w = augment(white, 32, torch.Generator().manual_seed(0), grayscale_p=1.0)
    assert torch.allclose(w[:, 0], w[0, 0, 0, 0].expand_as(w[:, 0]), atol=1e-4)


def test_colour_jitter_and_blur_act_as_documented():
    from fewclip.pretrain.train import CLIP_MEAN, CLIP_STD

    def unnormalise(x):
        return x * CLIP_STD + CLIP_MEAN

    # a flat grey image: contrast and saturation leave it alone, brightness scales it by a
    # factor in [1 - s, 1 + s]; it stays grey and flat
    grey = torch.full((64, 3, 64, 64), 128, dtype=torch.uint8)
    x = unnormalise(augment(grey, 32, torch.Generator().manual_seed(0), color_jitter=0.4))
    per_image = x.flatten(1)
    assert torch.allclose(per_image, per_image[:, :1].expand_as(per_image), atol=1e-5)
    ratio = per_image[:, 0] / (128 / 255)
    assert ratio.min() >= 0.6 - 1e-5 and ratio.max() <= 1.4 + 1e-5
    assert ratio.max() - ratio.min() > 0.3  # factors really vary across images
    # saturation: a pure red image keeps its luminance-weighted order but the factor applies
    red = torch.zeros((64, 3, 64, 64), dtype=torch.uint8)
    red[:, 0] = 200
    r = unnormalise(augment(red, 32, torch.Generator().manual_seed(1), color_jitter=0.4))
    assert (r[:, 1] > 0).any()  # desaturation mixes luminance into the other channels
    # blur_p = 1 smooths a checkerboard; blur_p = 0 and jitter 0 draw what version 1 drew
    board = ((torch.arange(64)[:, None] + torch.arange(64)[None]) % 2 * 255).to(torch.uint8)
    board = board.expand(4, 3, 64, 64).contiguous()
    sharp = augment(board, 64, torch.Generator().manual_seed(2), scale_min=1.0, grayscale_p=0)
    soft = augment(
        board, 64, torch.Generator().manual_seed(2), scale_min=1.0, grayscale_p=0, blur_p=1.0
    )
    assert soft.std() < 0.8 * sharp.std()
    v1 = augment(board, 32, torch.Generator().manual_seed(3))
    off = augment(board, 32, torch.Generator().manual_seed(3), color_jitter=0.0, blur_p=0.0)
    assert torch.equal(v1, off)


def test_edges_hand_case():
    """White 8 x 8 with a red 4 x 4 square at rows / columns 2-5: a luminance step marks the
    pixel left of / above it (column 1, row 1 beside the square) and the square's own far
    side (column 5, row 5); the square's border ring touches the background."""
    from fewclip.pretrain.train import _edges

    x = torch.ones(1, 3, 8, 8)
    x[:, 1:, 2:6, 2:6] = 0.0
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[2:6, 2:6] = True
    expected[3:5, 3:5] = False  # the square's inside touches no background, has no step
    expected[2:6, 1] = True  # steps to the right neighbour
    expected[1, 2:6] = True  # steps to the neighbour below
    assert torch.equal(_edges(x)[0, 0], expected)
    assert not _edges(torch.ones(1, 3, 8, 8)).any()  # a blank image has no edges


def test_outline_and_sketch_act_as_documented():
    """Outlines darken exactly the edges of the augmented image (one grey in [0, 0.25]); a
    sketch is those edges black on white; both off draw what version 1 drew."""
    from fewclip.pretrain.train import CLIP_MEAN, CLIP_STD, _edges

    def unnormalise(x):
        return x * CLIP_STD + CLIP_MEAN

    square = torch.full((3, 3, 64, 64), 255, dtype=torch.uint8)
    square[:, 1:, 16:48, 16:48] = 0  # red on white
    keep = dict(scale_min=0.8, grayscale_p=0.0)

    def draw(**kw):
        return unnormalise(augment(square, 64, torch.Generator().manual_seed(0), **keep, **kw))

    plain, lined, sketch = draw(), draw(outline_p=1.0), draw(sketch_p=1.0)
    edges = _edges(plain)[:, 0]  # (3, 64, 64)
    assert edges.sum() > 100
    changed = (lined - plain).abs().amax(1) > 1e-4
    assert torch.equal(changed, edges)  # exactly the edges change
    on_edges = lined.permute(1, 0, 2, 3)[:, edges]  # (3, edge pixels)
    assert on_edges.max() <= 0.25 + 1e-4
    assert torch.allclose(on_edges, on_edges[:1].expand_as(on_edges), atol=1e-5)  # grey
    assert torch.allclose(sketch, (~edges).float()[:, None].expand_as(sketch), atol=1e-5)
    board = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8)
    v1 = augment(board, 32, torch.Generator().manual_seed(3))
    off = augment(
        board, 32, torch.Generator().manual_seed(3), outline_p=0.0, sketch_p=0.0, zoom_out_p=0.0
    )
    assert torch.equal(v1, off)


def test_zoom_out_shrinks_the_whole_image_onto_white():
    """zoom_out_p = 1: every image is the whole input, shrunk to a square of side share in
    [zoom_out_min, 1] (uniform: mean near 0.75 for 0.5), everything around it white."""
    from fewclip.pretrain.train import CLIP_MEAN, CLIP_STD

    black = torch.zeros(64, 3, 32, 32, dtype=torch.uint8)
    gen = torch.Generator().manual_seed(0)
    out = augment(black, 32, gen, grayscale_p=0.0, zoom_out_p=1.0, zoom_out_min=0.5)
    out = out * CLIP_STD + CLIP_MEAN
    dark = out.mean(1) < 0.5  # (64, 32, 32)
    rows, cols = dark.any(2), dark.any(1)
    side_h, side_w = rows.sum(-1) / 32, cols.sum(-1) / 32
    assert (side_h >= 0.5 - 2 / 32).all() and (side_h <= 1).all()
    assert ((side_h - side_w).abs() <= 1 / 32 + 1e-6).all()  # a square, as the input
    assert 0.65 < float(side_h.mean()) < 0.85
    assert (side_h < 0.9).sum() > 20  # most images are shrunk, not cropped
    box = (rows[:, :, None] & cols[:, None, :]).float()[:, None]
    # white beyond the square's anti-aliased rim (one pixel)
    rim = torch.nn.functional.max_pool2d(box, 3, stride=1, padding=1)[:, 0] > 0
    assert torch.allclose(out.permute(1, 0, 2, 3)[:, ~rim], torch.tensor(1.0), atol=1e-4)
    white = torch.full((4, 3, 32, 32), 255, dtype=torch.uint8)
    blank = augment(white, 32, gen, grayscale_p=0.0, zoom_out_p=1.0) * CLIP_STD + CLIP_MEAN
    assert torch.allclose(blank, torch.tensor(1.0), atol=1e-4)


def test_pretrain_learns_resumes_and_round_trips(tmp_path):
    corpus = make_corpus(tmp_path)
    cfg = PretrainConfig(
        arch="fewclip-test-rn",
        corpus=str(corpus),
        out_dir=str(tmp_path / "runs"),
        steps=60,
        batch_size=5,
        lr=3e-3,
        warmup=5,
        checkpoint_every=30,
        log_every=10,
        crop_scale_min=0.9,
        grayscale_p=0.0,
    )
    ckpt = pretrain(cfg, progress=False)
    log = [json.loads(r) for r in (cfg.run_dir / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [10, 20, 30, 40, 50, 60]
    assert log[-1]["loss"] < log[0]["loss"]

    # resuming from the step-60 state with more steps continues, not restarts
    cfg.steps = 70
    pretrain(cfg, progress=False)
    log2 = [json.loads(r) for r in (cfg.run_dir / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log2] == [10, 20, 30, 40, 50, 60, 70]

    # the fp16 checkpoint loads back through the user path and classifies the colours
    bb = load_backbone("fewclip-test-rn", str(ckpt))
    assert bb.is_pretrained and bb.weights_file == str(ckpt)
    result = evaluate_backbone(bb, corpus)
    assert result["seen_names"]["google"]["classes"] == len(COLOURS) - 1
    assert result["seen_names"]["google"]["top1"] > 100 / (len(COLOURS) - 1)


def emoji_with_keywords(keywords=("festive", "red", "beard", "gift")):
    return Emoji(
        id="1F385",
        name="father christmas",
        short_names=["santa"],
        category="People & Body",
        subcategory="person-fantasy",
        heldout=False,
        keywords=list(keywords),
    )


def test_caption_builder_templates_keywords_and_seed():
    e = emoji_with_keywords()
    plain = {
        t.format(name=n, sub="person fantasy")
        for t in CAPTION_TEMPLATES
        for n in ("father christmas", "santa")
    }
    rng = random.Random(0)
    assert {build_caption(e, rng, keyword_p=0.0) for _ in range(300)} == plain
    rng = random.Random(0)
    with_kw = [build_caption(e, rng, keyword_p=1.0) for _ in range(400)]
    assert not set(with_kw) & plain
    kw_only = [c for c in with_kw if not any(n in c for n in ("father christmas", "santa"))]
    assert kw_only  # the "{kw}" template: keywords alone
    for c in kw_only:
        words = c.split(", ")
        assert 1 <= len(words) <= 3 and len(set(words)) == len(words)
        assert set(words) <= set(e.keywords)
    assert any("a people and body emoji of" in c for c in with_kw)  # category template
    assert len({c.split(":")[0] for c in with_kw if ":" in c}) == 2  # both names used
    # the same seed gives the same captions; no keywords: plain templates only
    a = [build_caption(e, random.Random(5), 0.5) for _ in range(3)]
    assert a == [build_caption(e, random.Random(5), 0.5) for _ in range(3)]
    # keyword_p = 0 repeats the version-1 recipe's draws (template, then name)
    rng, ref = random.Random(7), random.Random(7)
    names = ["father christmas", "santa"]
    for _ in range(20):
        template = ref.choice(CAPTION_TEMPLATES)
        want = template.format(name=ref.choice(names), sub="person fantasy")
        assert build_caption(e, rng, keyword_p=0.0) == want
    bare = emoji_with_keywords(keywords=())
    assert {build_caption(bare, random.Random(i), 1.0) for i in range(50)} <= plain


def test_group_captions_name_the_subcategory_or_category_and_nothing_else():
    e = emoji_with_keywords()
    groups = [build_caption(e, random.Random(i), 0.3, group_p=1.0) for i in range(300)]
    levels = ("person fantasy", "people and body")
    forms = {t.format(group=g) for t in GROUP_TEMPLATES for g in levels}
    assert set(groups) == forms  # every form, both levels, spelled as the tasks' class names
    assert not any(n in c for c in groups for n in ("father christmas", "santa", "festive"))
    share_sub = sum("person fantasy" in c for c in groups) / len(groups)
    assert share_sub == pytest.approx(2 / 3, abs=0.08)
    only_sub = [
        build_caption(e, random.Random(i), 0.3, group_p=1.0, group_category_share=0.0)
        for i in range(100)
    ]
    assert all("person fantasy" in c for c in only_sub)  # group_category_share=0
    only_cat = [
        build_caption(e, random.Random(i), 0.3, group_p=1.0, group_category_share=1.0)
        for i in range(100)
    ]
    assert all("people and body" in c for c in only_cat)
    mixed = [build_caption(e, random.Random(i), 0.3, group_p=0.25) for i in range(800)]
    assert sum(c in forms for c in mixed) / len(mixed) == pytest.approx(0.25, abs=0.05)
    # group_p = 0 draws nothing extra: the versions-1-4 recipes' captions, draw for draw
    for kw in (0.0, 0.3):
        rng, ref = random.Random(3), random.Random(3)
        assert [build_caption(e, rng, kw, group_p=0.0) for _ in range(50)] == [
            build_caption(e, ref, kw) for _ in range(50)
        ]


def test_clip_loss_takes_identical_captions_as_positives_of_each_other():
    g = torch.Generator().manual_seed(0)
    image = torch.nn.functional.normalize(torch.randn(5, 8, generator=g), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(5, 8, generator=g), dim=-1)
    scale = torch.tensor(7.0)
    distinct = ["a", "b", "c", "d", "e"]
    assert clip_loss(image, text, scale, distinct) == open_clip.ClipLoss()(image, text, scale)
    captions = ["x", "y", "x", "z", "x"]  # images 0, 2, 4 share a caption
    logits = (scale * image @ text.T).tolist()
    want = 0.0
    for rows in (
        logits,
        [list(c) for c in zip(*logits, strict=True)],
    ):  # images -> texts, texts -> images
        for i, row in enumerate(rows):
            log_z = float(torch.tensor(row).logsumexp(0))
            pos = [j for j, c in enumerate(captions) if c == captions[i]]
            want += -sum(row[j] - log_z for j in pos) / len(pos) / len(rows) / 2
    assert float(clip_loss(image, text, scale, captions)) == pytest.approx(want, rel=1e-6)
    assert float(clip_loss(image, text, scale, captions)) != pytest.approx(
        float(open_clip.ClipLoss()(image, text, scale)), rel=1e-3
    )


def test_held_out_styles_and_names_never_reach_pretraining(tmp_path):
    corpus = make_corpus(tmp_path, styles=("google", "twitter", "openmoji", "fluent-flat"))
    with pytest.raises(ValueError, match="held out of pretraining"):
        build_training_set(corpus, styles=("google", "fluent-flat"))
    data = build_training_set(corpus)  # all TRAIN_STYLES the corpus has
    rows = read_corpus(corpus)
    allowed = {(e.id, s) for e in rows if not e.heldout for s in e.images if s in TRAIN_STYLES}
    assert {(e.id, s) for e in rows for s in e.images} - allowed  # something is excluded
    loaded = {data.images[i].numpy().tobytes() for i in range(len(data.images))}
    for e in rows:
        for style, paths in e.images.items():
            with Image.open(corpus / paths[0]) as im:
                arr = np.asarray(im.convert("RGBA"))
            rgb = np.where(arr[..., 3:] > 0, arr[..., :3], 255).astype(np.uint8)
            key = torch.from_numpy(rgb).permute(2, 0, 1).contiguous().numpy().tobytes()
            assert (key in loaded) == ((e.id, style) in allowed), (e.name, style)
    assert data.images.shape[0] == len(allowed)


def test_style_sampling_balances_styles(tmp_path):
    corpus = make_corpus(tmp_path, styles=("google", "twitter"))
    rows = [json.loads(r) for r in (corpus / "emoji.jsonl").read_text().splitlines()]
    for r in rows:  # four extra twitter pictures per emoji (skin tones, say)
        r["images"]["twitter"] = r["images"]["twitter"] * 5
    (corpus / "emoji.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    share = {}
    for sampling in ("style", "image"):
        data = build_training_set(corpus, sampling=sampling)
        google = {int(i) for gs in data.by_style for i in gs[0]}
        rng = random.Random(0)
        picks = []
        for _ in range(200):
            chosen = rng.sample(range(len(data.emoji)), 5)
            picks += (
                [rng.choice(rng.choice(data.by_style[c])) for c in chosen]
                if (sampling == "style")
                else [int(rng.choice(data.by_emoji[c])) for c in chosen]
            )
        share[sampling] = sum(p in google for p in picks) / len(picks)
    assert share["style"] == pytest.approx(0.5, abs=0.06)
    assert share["image"] == pytest.approx(1 / 6, abs=0.05)
    grouped = build_training_set(corpus, sampling="style", keyword_p=0.3, group_p=1.0)
    _, captions = grouped.sample_batch(4, random.Random(0))
    assert set(captions) <= {t.format(group=g) for t in GROUP_TEMPLATES for g in ("sub", "c")}


def test_warm_start_loads_the_checkpoint(tmp_path):
    corpus = make_corpus(tmp_path)
    first = PretrainConfig(
        arch="fewclip-test-rn",
        corpus=str(corpus),
        out_dir=str(tmp_path / "a"),
        steps=3,
        batch_size=4,
        warmup=1,
        log_every=1,
        checkpoint_every=3,
    )
    ckpt = pretrain(first, progress=False)
    again = PretrainConfig(**{**first.__dict__, "out_dir": str(tmp_path / "b"), "steps": 0})
    again.init_from = str(ckpt)
    copy = pretrain(again, progress=False)
    a, b = load_file(str(ckpt)), load_file(str(copy))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    fresh = PretrainConfig(**{**again.__dict__, "out_dir": str(tmp_path / "c"), "init_from": ""})
    c = load_file(str(pretrain(fresh, progress=False)))
    assert not all(torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())


class _Payload:
    """Unpickling this calls ``open(marker, "w")``: code run by merely loading a file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_resume_refuses_a_planted_pickle_payload(tmp_path):
    corpus = make_corpus(tmp_path)
    cfg = PretrainConfig(
        arch="fewclip-test-rn", corpus=str(corpus), out_dir=str(tmp_path / "runs"), steps=1
    )
    cfg.run_dir.mkdir(parents=True)
    marker = tmp_path / "payload-ran"
    torch.save(
        {"model": _Payload(marker), "optimizer": {}, "rng": [], "step": 0}, cfg.run_dir / "state.pt"
    )
    with pytest.raises(ValueError, match="state.pt is not a fewclip training state"):
        pretrain(cfg, progress=False)
    assert not marker.exists()  # the payload never ran


def test_training_state_loads_with_weights_only(tmp_path):
    from fewclip.pretrain.train import _rng_state, _set_rng_state, load_state

    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    rng = random.Random(5)
    state = {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "rng": _rng_state(rng),
        "generator": torch.Generator().get_state(),
        "step": 3,
    }
    torch.save(state, tmp_path / "state.pt")
    back = load_state(tmp_path / "state.pt")  # torch.load(weights_only=True) inside
    again = random.Random()
    _set_rng_state(again, back["rng"])
    assert again.random() == rng.random() and back["step"] == 3
    torch.optim.AdamW(model.parameters()).load_state_dict(back["optimizer"])
    (tmp_path / "junk.pt").write_bytes(b"\x80\x04 random bytes, not a pickle")
    with pytest.raises(ValueError, match="junk.pt is not a fewclip training state"):
        load_state(tmp_path / "junk.pt")


@pytest.mark.parametrize("arch, versions", [("tiny-emoji-rn", 5), ("tiny-emoji-vit", 4)])
def test_the_resumable_recipe_is_the_model_cards_recipe(arch, versions):
    """``fewclip.pretrain.recipe`` runs the commands of each tiny model's card
    (only the seed, folders, threads and checkpoint interval may differ)."""
    import shlex

    from fewclip.backbones import WEIGHTS_DIR
    from fewclip.pretrain.__main__ import parse
    from fewclip.pretrain.recipe import checkpoint_of, stage_configs

    card = (WEIGHTS_DIR / f"{arch}.md").read_text()
    block = card.split("## Recipe", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    lines = [line for line in block.replace("\\\n", " ").splitlines() if line.strip()]
    commands = [line for line in lines if line.startswith("python")]
    assert len(commands) == versions
    free = {"seed", "out_dir", "init_from", "threads", "checkpoint_every", "channels_last"}
    stages = stage_configs(arch, 7, "/tmp/somewhere", threads=1)
    for i, (command, stage) in enumerate(zip(commands, stages, strict=True), start=1):
        card_cfg, _ = parse([a for a in shlex.split(command)[3:] if a != "--install"])
        for f in dataclasses.fields(card_cfg):
            if f.name not in free:
                assert getattr(stage, f.name) == getattr(card_cfg, f.name), (i, f.name)
        assert stage.seed == 7 and stage.out_dir == f"/tmp/somewhere/v{i}"
        # each stage continues the one before; the first starts from scratch
        assert bool(stage.init_from) == bool(card_cfg.init_from) == (i > 1)
        if i > 1:
            # where the stage before wrote its weights (pretrain: <out_dir>/<arch>/<arch>.*)
            before = f"/tmp/somewhere/v{i - 1}/{arch}/{arch}.safetensors"
            assert stage.init_from == before == str(checkpoint_of(stages[i - 2]))


def test_channels_last_is_the_same_computation_in_values_and_gradients():
    """The channels-last layout (``--channels-last``, a speed option) gives the contiguous
    layout's loss and gradients up to float rounding, step for step."""
    torch.manual_seed(0)
    plain = open_clip.create_model("fewclip-test-rn", pretrained=None)
    fast = open_clip.create_model("fewclip-test-rn", pretrained=None)
    fast.load_state_dict(plain.state_dict())
    fast = fast.to(memory_format=torch.channels_last)
    assert fast.visual.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    images = torch.rand(6, 3, 32, 32)
    texts = open_clip.get_tokenizer("fewclip-test-rn")([f"a {n}" for n in COLOURS])
    losses = []
    for model, x in ((plain, images), (fast, images.contiguous(memory_format=torch.channels_last))):
        image_f, text_f, scale = model(x, texts)
        loss = clip_loss(image_f, text_f, scale, list(COLOURS), open_clip.ClipLoss())
        loss.backward()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    grads = dict(fast.named_parameters())
    # float rounding: 1e-4 of each gradient's scale (plus 1e-7 for gradients that are zero
    # in exact arithmetic, e.g. the attention pool's key bias)
    for name, p in plain.named_parameters():
        scale = p.grad.abs().max().item()
        assert (grads[name].grad - p.grad).abs().max().item() <= 1e-4 * scale + 1e-7, name


def test_channels_last_pretraining_resumes_and_writes_a_loadable_checkpoint(tmp_path):
    """A run with ``channels_last`` logs the plain run's losses (up to rounding), and its
    fp16 checkpoint (written contiguous) loads back; the flag parses both ways."""
    from fewclip.pretrain.__main__ import parse

    corpus = make_corpus(tmp_path)
    common = dict(
        arch="fewclip-test-rn", corpus=str(corpus), steps=6, batch_size=5, lr=3e-3,
        warmup=2, checkpoint_every=3, log_every=3, crop_scale_min=0.9, grayscale_p=0.0,
    )  # fmt: skip
    logs, weights = [], []
    for layout in (False, True):
        cfg = PretrainConfig(**common, out_dir=str(tmp_path / f"cl{layout}"), channels_last=layout)
        weights.append(load_file(pretrain(cfg, progress=False)))
        log = (cfg.run_dir / "train_log.jsonl").read_text().splitlines()
        logs.append([json.loads(r)["loss"] for r in log])
    assert logs[0] == pytest.approx(logs[1], rel=1e-4)
    for name, w in weights[0].items():
        torch.testing.assert_close(weights[1][name], w, rtol=1e-2, atol=1e-3, msg=name)
    assert load_backbone("fewclip-test-rn", str(cfg.run_dir / "fewclip-test-rn.safetensors"))
    assert parse(["--channels-last"])[0].channels_last is True
    assert parse([])[0].channels_last is False


def test_the_recipe_resumes_after_the_last_finished_stage(tmp_path):
    """Only the last finished stage's weights need to be kept: the recipe starts after it
    (not at the first stage whose weights are missing)."""
    from fewclip.pretrain.recipe import checkpoint_of, stage_configs, stages_to_run

    stages = stage_configs("tiny-emoji-rn", 1, tmp_path)
    assert stages_to_run(stages) == stages
    v2 = checkpoint_of(stages[1])
    v2.parent.mkdir(parents=True)
    v2.write_bytes(b"")
    assert [cfg.out_dir for cfg in stages_to_run(stages)] == [
        str(tmp_path / f"v{i}") for i in (3, 4, 5)
    ]
    last = checkpoint_of(stages[-1])
    last.parent.mkdir(parents=True)
    last.write_bytes(b"")
    assert stages_to_run(stages) == []
