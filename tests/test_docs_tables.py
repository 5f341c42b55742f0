"""The documentation's result tables are renderings of committed result files (benchmarks/render_docs.py), so a
number edited by hand, or a result file replaced without rendering, fails here."""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import render_docs  # noqa: E402


def test_every_marker_has_its_result_file():
    markers = render_docs.markers(REPO)
    assert any(name == "acdc_scribble_cpu_test" for _, name in markers), markers
    missing = [(page.relative_to(REPO), name) for page, name in markers
               if not (REPO / render_docs.RESULTS / f"{name}.json").is_file()]
    assert not missing, f"markers without documentation/results/NAME.json: {missing}"


def test_every_table_is_its_rendering(capsys):
    assert render_docs.main(["--check"]) == 0, capsys.readouterr().out


def test_a_number_edited_by_hand_fails_the_check(tmp_path, capsys):
    shutil.copytree(REPO / "documentation", tmp_path / "documentation")
    page = tmp_path / "documentation" / "benchmarks.md"
    text = page.read_text()
    block = re.search(r"<!-- results: acdc_scribble_cpu_test -->\n.*?<!-- /results -->", text, re.DOTALL)
    number = re.search(r"\| (\d\.\d{3})", block[0])  # the first Dice of the table
    edited = block[0][:number.start(1)] + f"{float(number[1]) + 0.03:.3f}" + block[0][number.end(1):]
    assert edited != block[0]
    page.write_text(text.replace(block[0], edited))

    assert render_docs.main(["--check", "--root", str(tmp_path)]) == 1
    assert "documentation/benchmarks.md: table 'acdc_scribble_cpu_test' differs" in capsys.readouterr().out
    assert render_docs.main(["--root", str(tmp_path)]) == 0  # rendering restores the number
    assert page.read_text() == text
    assert render_docs.main(["--check", "--root", str(tmp_path)]) == 0
