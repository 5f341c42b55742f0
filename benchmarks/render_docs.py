"""Rewrite the documentation's result tables from the committed result files, so that no table drifts from its run.

A table stands between ``<!-- results: NAME -->`` and ``<!-- /results -->`` in a page of documentation/ (or the
README) and is rendered from ``documentation/results/NAME.json`` by the ``tables`` function of the benchmark script
that wrote it, the one whose name begins NAME (``ssm_speed`` for ``ssm_speed.json``, ``clicks_benefit`` for
``clicks_benefit_decoy.json``); ``demo_*`` by ``nnunetv2_mamba demo``'s own table, ``history_*`` (a case study's
table of what was tried) as its ``columns`` and ``rows`` stand. A line naming the machine follows the tables of a
file that records one. A file transcribed from earlier documentation, where the run's JSON was not kept, says so in
its ``source`` field.

To show a new run: copy its JSON from benchmarks/results/ (ignored by git) over the committed file and run

    python benchmarks/render_docs.py            # rewrite every table
    python benchmarks/render_docs.py --check    # change nothing; exit 1 naming each page and table that differs

tests/test_docs_tables.py runs the check.
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

RESULTS = Path("documentation") / "results"
BLOCK = re.compile(r"(<!-- results: (?P<name>\S+) -->\n)(?P<body>.*?)(<!-- /results -->)", re.DOTALL)
SCRIPTS = ("ssm_speed", "nets_speed", "gpu_check", "acdc_scribble", "acdc_semisupervised", "acdc_clicks",
           "clicks_benefit", "ssl_recipe")


def history(payload: dict[str, Any]) -> str:
    """A case study's table of what was tried: its rows under its columns."""
    from common import format_table

    return format_table(payload["rows"], payload["columns"])


def demo(payload: dict[str, Any]) -> str:
    """The table of ``nnunetv2_mamba demo``, from its ``demo_results.json`` list kept under ``results``."""
    from nnunetv2_mamba.demo import format_table

    return format_table(payload["results"])


def table_function(name: str) -> Callable[[dict[str, Any]], str]:
    """The function that renders ``NAME.json``: that of the script its name begins with."""
    for prefix, function in (("history", history), ("demo", demo)):
        if name == prefix or name.startswith(prefix + "_"):
            return function
    script = next((s for s in SCRIPTS if name == s or name.startswith(s + "_")), None)
    if script is None:
        raise SystemExit(f"{name}: no script renders it (a name begins with one of {SCRIPTS + ('history', 'demo')})")
    return importlib.import_module(script).tables


def machine_line(machine: dict[str, Any]) -> str:
    """Where a run was measured, from the ``machine`` record of benchmarks/common.py (fields it lacks left out)."""
    parts = [machine.get("cuda") or machine.get("cpu"),
             f"{machine['threads']} threads" if machine.get("threads") else None,
             f"torch {machine['torch']}" if machine.get("torch") else None, machine.get("date"), machine.get("load")]
    return "Measured on " + ", ".join(str(p) for p in parts if p) + "."


def render_block(name: str, root: Path) -> str:
    """The markdown between the markers of ``name``."""
    path = root / RESULTS / f"{name}.json"
    if not path.is_file():
        raise SystemExit(f"{path}: missing; the marker '<!-- results: {name} -->' needs it")
    payload = json.loads(path.read_text())
    text = table_function(name)(payload)
    if payload.get("machine"):
        text += "\n\n" + machine_line(payload["machine"])
    return text + "\n"


def pages(root: Path) -> Iterator[Path]:
    """The README, where there is one, and every page of documentation/."""
    yield from [root / "README.md"] if (root / "README.md").is_file() else []
    yield from sorted((root / "documentation").rglob("*.md"))


def markers(root: Path) -> list[tuple[Path, str]]:
    """(page, NAME) of every results marker, in order."""
    return [(page, match["name"]) for page in pages(root) for match in BLOCK.finditer(page.read_text())]


def render(text: str, root: Path) -> tuple[str, list[str]]:
    """``text`` with every marked table rendered, and the names of the tables that changed."""
    changed: list[str] = []

    def replace(match: re.Match) -> str:
        body = render_block(match["name"], root)
        if body != match["body"]:
            changed.append(match["name"])
        return match[1] + body + match[4]

    return BLOCK.sub(replace, text), changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a table differs")
    parser.add_argument("--root", type=Path, default=REPO, help="the repository (default: this one)")
    args = parser.parse_args(argv)
    differ = 0
    for page in pages(args.root):
        text = page.read_text()
        rendered, changed = render(text, args.root)
        for name in changed:
            differ += 1
            print(f"{page.relative_to(args.root)}: table '{name}' differs from its rendering of "
                  f"{RESULTS / name}.json" + ("" if args.check else "; rewritten"))
        if changed and not args.check:
            page.write_text(rendered)
    return 1 if differ and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
