"""The README and the documentation point at things that exist: every ``nnunetv2_mamba.…`` name they give imports,
every relative link reaches its file and heading (moving a module or renaming a section breaks this test, not a
reader's copy-paste)."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "documentation").rglob("*.md"))]
DOTTED = re.compile(r"\bnnunetv2_mamba(?:\.[A-Za-z_][A-Za-z_0-9]*)+")
LINK = re.compile(r"\]\(([^)\s]+)\)")
MISSPELT_ON_PURPOSE = {"nnunetv2_mamba.nets.mamba_unet.MambaUnet"}  # plans.md quotes the error a misspelt class gets


def resolve(dotted: str) -> object:
    """The module or attribute a dotted name denotes: the longest importable module, then attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            found = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[cut:]:
            found = getattr(found, attribute)
        return found
    raise ModuleNotFoundError(dotted)


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {github_anchor(line.lstrip("#")) for line in page.read_text().splitlines() if re.match(r"#{1,6} ", line)}


def named(pattern: re.Pattern) -> list[tuple[str, str]]:
    """(page, match) for every match of ``pattern`` outside the pages' code blocks, once each."""
    found = set()
    for page in PAGES:
        prose = re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)
        found |= {(str(page.relative_to(REPO)), m.group(1) if m.groups() else m.group(0))
                  for m in pattern.finditer(prose)}
    return sorted(found)


@pytest.mark.parametrize("page, dotted", [(p, d) for p, d in named(DOTTED) if d not in MISSPELT_ON_PURPOSE])
def test_named_modules_and_objects_exist(page, dotted):
    try:
        resolve(dotted)
    except (ImportError, AttributeError) as error:
        pytest.fail(f"{page} names {dotted}, which does not exist: {error}")


@pytest.mark.parametrize("page, target", [(p, t) for p, t in named(LINK) if "://" not in t and
                                          not t.startswith("mailto:")])
def test_relative_links_reach_their_file_and_heading(page, target):
    path, _, anchor = target.partition("#")
    linked = (REPO / page).parent / path if path else REPO / page
    assert linked.exists(), f"{page} links to {target}: no {linked.relative_to(REPO)}"
    if anchor and linked.suffix == ".md":
        assert anchor in anchors(linked), f"{page} links to {target}: no such heading in {path or page}"


def test_the_checks_catch_what_they_guard():
    with pytest.raises(AttributeError):
        resolve("nnunetv2_mamba.nets.umamba_bot.NoSuchNetwork")
    with pytest.raises(AttributeError):
        resolve("nnunetv2_mamba.training.scribble_schedules")  # moved to training/variants/scribble.py
    assert github_anchor("ACDC with real scribbles: nnU-Net, Weak-Mamba-UNet and the dense upper bound") == \
        "acdc-with-real-scribbles-nnu-net-weak-mamba-unet-and-the-dense-upper-bound"
