"""The docs site's hooks: option tables read from the source agree with the methods'
option dataclasses, and repository-relative links are rewritten for the site."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent


def _hooks():
    spec = importlib.util.spec_from_file_location("fewclip_docs_hooks", ROOT / "docs/hooks.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_option_tables_list_every_method_with_its_dataclass_defaults():
    import fewclip.methods  # noqa: F401  (registers the methods)
    from fewclip.fitting import METHODS

    found = _hooks().method_options()
    assert set(found) == set(METHODS)
    for name, cls in METHODS.items():
        fields = {f.name: f for f in dataclasses.fields(cls.Options)}
        rows = found[name]["fields"]
        namespace = {}  # constants named in defaults, from the modules defining the options
        for klass in reversed([cls, *cls.Options.__mro__]):
            namespace.update(vars(sys.modules[klass.__module__]))
        assert [r[0] for r in rows] == list(fields), name
        for field, _kind, default, _note in rows:
            f = fields[field]
            if f.default is not dataclasses.MISSING:
                assert eval(default, namespace) == f.default, (name, field)  # noqa: S307


def test_links_are_rewritten_for_the_site():
    hooks = _hooks()
    page = SimpleNamespace(file=SimpleNamespace(src_uri="data.md"))
    text = "[layout](../data/README.md), [sweep](../lib/fewclip/sweep.py), [x](nowhere.md)"
    out = hooks.on_page_markdown(text, page, None, None)
    assert "[layout](data/README.md)" in out  # published outside docs/
    assert "sweep (`lib/fewclip/sweep.py`)" in out  # a source file: named, not linked
    assert "[x](nowhere.md)" in out  # left for --strict to fail on
    card = SimpleNamespace(file=SimpleNamespace(src_uri="models/tiny-emoji-vit.md"))
    assert "[rn](tiny-emoji-rn.md)" in hooks.on_page_markdown("[rn](tiny-emoji-rn.md)", card, 0, 0)


def test_the_readme_stays_a_short_front_door_with_working_links():
    import re

    readme = (ROOT / "README.md").read_text()
    assert len(readme.encode()) <= 12_800, "README.md is over about 12 KB: move detail to docs/"
    slugs = {
        re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
        for h in re.findall(r"^#+ (.+)$", readme, flags=re.M)
    }
    anchors = re.findall(r"\]\(#([^)]+)\)", readme)
    assert anchors and set(anchors) <= slugs, set(anchors) - slugs  # the table of contents
    for target in re.findall(r"\]\((?!https?:|#)([^)#\s]+)", readme):
        assert (ROOT / target).exists(), f"README.md links to {target}, which does not exist"
