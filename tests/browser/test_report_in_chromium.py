"""The HTML report in a real browser (issue 18, item 6): headless Chromium renders report.html of real drill
reports, and the page must have no script error, every step of report.json its label and bar in the
timeline, and every text of the timeline inside the SVG without overlapping another.

The reports in fixtures/ are report.json files written by `jams-dr drill` (the default scenario, `failure:
none`, and `failback: true` with its failback report); the HTML is rendered from them by the current code.
To refresh one, copy the report.json (or failback-report.json) of a drill run over it.
The checker itself is tested on pages broken on purpose: a checker that passes a broken page proves nothing.

Chromium is Debian's package (`make browser`; `.ci/run` installs it). Without it the tests are skipped on a
developer's machine, and fail in CI (CI set), so CI can never pass by skipping them.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from jamsdr.report_render import to_html, write_report_files
from tests.browser.chromium import Chromium, Rendering, chromium_path

FIXTURES = Path(__file__).parent / "fixtures"
REPORTS = sorted(FIXTURES.glob("*.json"))
MARKS = (("failure_at", "failure"), ("detected_at", "detected"), ("decided_at", "decided"),
         ("recovered_at", "recovered"))
# Sub-pixel rounding of the browser's layout: a box this close to an edge is on it, not across it.
EPSILON = 0.5


@pytest.fixture(scope="module")
def chromium() -> Iterator[Chromium]:
    """One browser for the module; each page gets its own tab (and its own errors)."""
    found = chromium_path()
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("CI is set and no Chromium is installed: .ci/run installs Debian's chromium "
                        "(make browser); the browser tests must run in CI, never be skipped")
        pytest.skip("no Chromium on this machine (make browser installs Debian's chromium package)")
    with Chromium(found) as browser:
        yield browser


def _overlap(a: dict[str, float], b: dict[str, float]) -> bool:
    return (min(a["right"], b["right"]) - max(a["left"], b["left"]) > EPSILON
            and min(a["bottom"], b["bottom"]) - max(a["top"], b["top"]) > EPSILON)


def _inside(box: dict[str, float], frame: dict[str, float]) -> bool:
    return (box["left"] >= frame["left"] - EPSILON and box["right"] <= frame["right"] + EPSILON
            and box["top"] >= frame["top"] - EPSILON and box["bottom"] <= frame["bottom"] + EPSILON)


def page_problems(report: dict[str, Any], rendering: Rendering) -> list[str]:
    """What is wrong with the rendered report page; [] when nothing is."""
    problems = [f"script error: {line}" for line in rendering.errors]
    svg = rendering.layout.get("svg")
    if not svg:
        return [*problems, "no timeline SVG on the page"]
    texts: list[dict[str, Any]] = rendering.layout["texts"]
    return [*problems, *_missing(report, texts, rendering.layout["bars"], svg), *_misplaced(texts, svg)]


def _missing(report: dict[str, Any], texts: list[dict[str, Any]], bars: list[dict[str, Any]],
             svg: dict[str, float]) -> list[str]:
    """Each step's label and bar, each mark's label, the RTO and RPO spans the report's times call for."""
    problems = []
    labels = [t["text"] for t in texts]
    for step in report.get("steps", []):
        name = str(step["name"])
        if name not in labels:
            problems.append(f"step {name}: no label in the timeline")
        own = [b for b in bars if b["title"].startswith(f"{name}:")]
        if not own:
            problems.append(f"step {name}: no bar in the timeline")
        problems += [f"step {name}: its bar {b['box']} is not drawn inside the SVG {svg}"
                     for b in own if b["box"]["width"] <= 0 or not _inside(b["box"], svg)]
    problems += [f"mark {label}: no label although report.json has {key}"
                 for key, label in MARKS if report.get(key) and label not in labels]
    ids = {t["id"] for t in texts}
    if report.get("failure_at") and report.get("recovered_at") and "rto" not in ids:
        problems.append("no RTO span although the report has a failure and a recovery")
    if report.get("failure_at") and (report.get("snapshot") or {}).get("created_at") and "rpo" not in ids:
        problems.append("no RPO span although the report has a failure and a snapshot")
    return problems


def _misplaced(texts: list[dict[str, Any]], svg: dict[str, float]) -> list[str]:
    """Every text of the timeline inside the SVG's box, none over another."""
    problems = [f"text {t['text']!r} at {t['box']} lies outside the SVG {svg}" for t in texts
                if not _inside(t["box"], svg)]
    for index, text in enumerate(texts):
        problems += [f"text {text['text']!r} overlaps {other['text']!r}" for other in texts[index + 1:]
                     if _overlap(text["box"], other["box"])]
    return problems


def rendered(report: dict[str, Any], directory: Path, chromium: Chromium,
             spoil: Callable[[str], str] | None = None) -> Rendering:
    """report.html as `jams-dr drill` writes it (write_report_files), optionally spoilt, in Chromium."""
    page = write_report_files(report, directory)[2]
    if spoil is not None:
        page.write_text(spoil(page.read_text()))
    return chromium.render(page)


@pytest.mark.parametrize("path", REPORTS, ids=[p.stem for p in REPORTS])
def test_a_drill_report_renders_in_chromium_without_errors_and_with_the_whole_timeline(
    path: Path, chromium: Chromium, tmp_path: Path
) -> None:
    report = json.loads(path.read_text())
    assert report.get("steps"), f"{path.name} has no steps: not a drill report"

    rendering = rendered(report, tmp_path, chromium)

    assert page_problems(report, rendering) == []
    assert len(rendering.layout["bars"]) == len(report["steps"])
    assert rendering.png.startswith(b"\x89PNG\r\n\x1a\n")


def test_fixtures_are_reports_of_real_drills() -> None:
    """The fixtures are what the drill writes, not hand-made: every kind, each step with its times."""
    kinds = set()
    for path in REPORTS:
        report = json.loads(path.read_text())
        kinds.add(report["kind"])
        assert report["execution_id"] and report["outcome"] == "succeeded", path.name
        assert all(step.get("started_at") and step.get("ended_at") for step in report["steps"]), path.name
    assert kinds == {"recovery", "drill", "failback"}


# ------------------------------------------------------------------ the checker on broken pages


def _recovery() -> dict[str, Any]:
    return dict(json.loads((FIXTURES / "recovery.json").read_text()))


def _first_step_label(page: str, replacement: Callable[[re.Match[str]], str]) -> str:
    spoilt, count = re.subn(r'<text x="[0-9.]+" y="([0-9.]+)" text-anchor="end" fill="#222">preflight</text>',
                            replacement, page, count=1)
    assert count == 1, "the page no longer draws the preflight label as the checker expects"
    return spoilt


BROKEN: dict[str, tuple[Callable[[str], str], str]] = {
    "an uncaught exception": (
        lambda page: page.replace("</body>", "<script>undefinedFunction();</script></body>"),
        "script error: uncaught exception: ReferenceError: undefinedFunction is not defined"),
    "a console error": (
        lambda page: page.replace("</body>", "<script>console.error('report data missing')</script></body>"),
        "script error: console.error: report data missing"),
    "a resource that does not load": (
        lambda page: page.replace("</body>", '<img src="no-such-chart.png"></body>'),
        "script error: log network: Failed to load resource"),
    "a step label pushed outside the SVG": (
        lambda page: _first_step_label(page, lambda m: f'<text x="-40" y="{m[1]}" text-anchor="end">preflight</text>'),
        "text 'preflight' at"),
    "a step label on top of another": (
        lambda page: _first_step_label(page, lambda m: '<text x="162" y="106" text-anchor="end">preflight</text>'),
        "text 'preflight' overlaps 'take_lease'"),
    "a missing step bar": (
        lambda page: re.sub(r'<rect class="step"[^>]*><title>verify:.*?</rect>', "", page, count=1),
        "step verify: no bar in the timeline"),
    "a missing mark label": (
        lambda page: page.replace(">recovered</text>", "></text>"),
        "mark recovered: no label although report.json has recovered_at"),
    "no timeline at all": (
        lambda page: re.sub(r"<svg .*?</svg>", "", page, count=1, flags=re.S),
        "no timeline SVG on the page"),
}


@pytest.mark.parametrize(("spoil", "expected"), BROKEN.values(), ids=list(BROKEN))
def test_the_checker_flags_a_broken_page(
    spoil: Callable[[str], str], expected: str, chromium: Chromium, tmp_path: Path
) -> None:
    report = _recovery()

    problems = page_problems(report, rendered(report, tmp_path, chromium, spoil))

    assert any(problem.startswith(expected) for problem in problems), problems


def test_the_checker_flags_a_step_the_timeline_leaves_out(chromium: Chromium, tmp_path: Path) -> None:
    """A step of report.json that the renderer dropped (here: one it was never given) is missing."""
    report = _recovery()
    page = tmp_path / "report.html"
    page.write_text(to_html(report))
    extra = {**report, "steps": [*report["steps"], {"name": "phantom_step", "outcome": "succeeded",
                                                    "started_at": report["steps"][0]["started_at"]}]}

    problems = page_problems(extra, chromium.render(page))

    assert problems == ["step phantom_step: no label in the timeline", "step phantom_step: no bar in the timeline"]
