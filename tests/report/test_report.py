"""The run report and the model card from a made-up history: verdicts and pooled intervals, sections that
appear only when they apply, no empty columns, a folded configuration, a Hugging Face model card; and the
page in headless Chromium (no broken image, silent console, not wider than the window)."""

from __future__ import annotations

import math

import pytest

from tests.report import fakerun
from tests.report.browser import check_page
from xr0_core.model_card import REQUIRED_SECTIONS, parse_card
from xr0_core.eval.summary import pooled_interval, summary_rows, verdict
from xr0_core.report import write_report


def test_verdict_follows_the_interval_and_the_metric_direction():
    assert verdict("linear-accuracy", 0.01, 0.2) == "better"
    assert verdict("linear-accuracy", -0.2, -0.01) == "worse"
    assert verdict("linear-accuracy", -0.05, 0.1) == "not shown"
    assert verdict("mre-px", -2.0, -0.5) == "better"  # fewer pixels of error is better
    assert verdict("mre-px", 0.5, 2.0) == "worse"
    assert verdict("linear-accuracy", math.nan, math.nan) == "no interval"


def test_pooled_interval_is_stratified_by_hospital():
    one = pooled_interval([{"diff": 0.1, "low": 0.02, "high": 0.15, "se": 0.03, "units": 10}])
    assert (one["low"], one["high"]) == (0.02, 0.15)  # one hospital: its own percentile interval
    two = pooled_interval([{"diff": 0.1, "low": 0, "high": 0, "se": 0.04, "units": 10},
                           {"diff": 0.4, "low": 0, "high": 0, "se": 0.02, "units": 30}])
    assert two["diff"] == pytest.approx((10 * 0.1 + 30 * 0.4) / 40)
    se = math.sqrt((0.25 * 0.04) ** 2 + (0.75 * 0.02) ** 2)
    assert two["low"] == pytest.approx(two["diff"] - 1.959964 * se)
    assert two["high"] == pytest.approx(two["diff"] + 1.959964 * se)


def test_summary_rows_pool_the_hospitals_intervals():
    rows = {r["task"]: r for r in summary_rows(fakerun.history())}
    acc = rows["anatomy"]
    assert acc["metric"] == "linear-accuracy" and acc["hospitals"] == 3 and acc["verdict"] == "better"
    assert acc["random"] == pytest.approx(0.8) and acc["pretrained"] > acc["random"]
    assert acc["low"] < acc["diff"] < acc["high"]
    assert rows["joints"]["metric"] == "mre-px" and rows["joints"]["verdict"] == "better"


@pytest.mark.slow  # headless Chromium
def test_default_report_sections_and_page(tmp_path):
    out = tmp_path / "run"
    write_report(out, fakerun.summary(), fakerun.history())
    html = (out / "report.html").read_text()
    assert "Summary: did pretraining help?" in html and "summary_forest.png" in html
    assert "curve_loss.png" in html and "mean loss of a slice" in html  # per-step summary, not per round
    assert "<th>scanner</th>" not in html  # every hospital left it empty
    assert "<details><summary>8 keys" in html  # configuration folded
    assert "id='privacy'" not in html and "id='secure-aggregation'" not in html
    assert "http://" not in html and "https://" not in html  # offline: nothing fetched
    page = check_page(out / "report.html", tmp_path / "browser")
    assert page.problems() == [], page.problems()
    assert page.images == 2 and page.screenshot.stat().st_size > 10_000
    assert page.sections[:2] == ["run", "summary"]


@pytest.mark.slow  # headless Chromium
def test_dp_secagg_report_sections_and_page(tmp_path):
    out = tmp_path / "run"
    write_report(out, fakerun.summary(dp=True, secagg=True), fakerun.history(dp=True, secagg=True))
    html = (out / "report.html").read_text()
    assert "privacy_epsilon.png" in html and "budget left" in html
    assert "masked uploads" in html and "error bound" in html and "no hospital dropped out" in html
    assert "under DP the losses" in html  # no curve, and it says why
    page = check_page(out / "report.html", tmp_path / "browser")
    assert page.problems() == [], page.problems()
    assert {"privacy", "secure-aggregation", "summary"} <= set(page.sections)


def test_nothing_to_evaluate_is_said_as_such(tmp_path):
    hist = fakerun.history()
    ev = hist[-1]
    ev["metrics"] = {"num-examples": 0.0}
    for s in ev["sites"]:
        s.update(status="empty", reason="nothing to evaluate", metrics={"num-examples": 0.0})
    out = tmp_path / "run"
    write_report(out, fakerun.summary(), hist)
    html = (out / "report.html").read_text()
    assert "nothing to evaluate" in html and "dropped" not in html
    card = (out / "model_card.md").read_text()
    assert "Nothing to evaluate" in card
    from server.run import evaluation_summary

    assert evaluation_summary(ev).startswith("nothing to evaluate")


def test_model_card_is_a_hugging_face_card(tmp_path):
    out = tmp_path / "run"
    write_report(out, fakerun.summary(dp=True, secagg=True), fakerun.history(dp=True, secagg=True))
    meta, sections = parse_card((out / "model_card.md").read_text())
    assert meta["license"] == "apache-2.0" and meta["pipeline_tag"] == "image-feature-extraction"
    assert {"differential-privacy", "secure-aggregation", "federated-learning"} <= set(meta["tags"])
    assert "linear-accuracy" in meta["metrics"]
    assert [s for s in sections if s in REQUIRED_SECTIONS] == list(REQUIRED_SECTIONS)
    text = (out / "model_card.md").read_text()
    assert "(ε = 2.700, δ = 1e-05)-DP" in text  # site00 after 3 rounds
    assert "chest 20, knee 28" in text and "synthetic phantoms" in text
    hub = pytest.importorskip("huggingface_hub")  # the Hub's own parser, when installed (it is, via transformers)
    card = hub.ModelCard.load(out / "model_card.md")
    assert card.data.license == "apache-2.0" and "timm" == card.data.library_name


def test_too_few_patients_give_no_verdict():
    # One patient per hospital: every resample is the same patient, spread 0; that is not certainty.
    tiny = [{"diff": 0.2, "low": 0.2, "high": 0.2, "se": 0.0, "units": 1} for _ in range(3)]
    iv = pooled_interval(tiny)
    assert iv["diff"] == pytest.approx(0.2) and math.isnan(iv["low"]) and iv["units"] == 3
    hist = fakerun.history()
    for s in hist[-1]["sites"]:  # 3 patients per hospital: an interval, but 9 < MIN_UNITS
        for k in [k for k in s["metrics"] if k.endswith("/units")]:
            s["metrics"][k] = 3.0
    assert {r["verdict"] for r in summary_rows(hist)} == {"too few patients"}


@pytest.mark.slow  # headless Chromium
def test_summary_rows_pool_the_intervals_against_raw_pixels(tmp_path):
    """The summary reads each hospital's `<task>/ci-pixels/...` keys and pools them like the random-init ones."""
    hist = fakerun.history()
    ev = hist[-1]
    for i, site in enumerate(ev["sites"]):  # hospital i: pretrained beats pixels by 0.1 * (i + 1)
        task, metric, diff = "classification/anatomy", "linear-accuracy", 0.1 * (i + 1)
        site["metrics"].update({f"{task}/pixels/{metric}": 0.8 - diff + 0.05 * (i + 1),
                                f"{task}/ci-pixels/{metric}/diff": diff, f"{task}/ci-pixels/{metric}/low": diff - 0.04,
                                f"{task}/ci-pixels/{metric}/high": diff + 0.04, f"{task}/ci-pixels/{metric}/se": 0.02,
                                f"{task}/ci-pixels/{metric}/units": 10.0 + i})
    from strategies.eval_aggregate import pooled_metrics

    ev["metrics"] = pooled_metrics([s["metrics"] for s in ev["sites"]])
    rows = {r["task"]: r for r in summary_rows(hist)}
    pix = rows["anatomy"]["vs_pixels"]
    units = [10.0, 11.0, 12.0]
    assert pix["diff"] == pytest.approx(sum(u * 0.1 * (i + 1) for i, u in enumerate(units)) / sum(units))
    assert pix["low"] < pix["diff"] < pix["high"] and pix["verdict"] == "better"
    assert math.isfinite(rows["anatomy"]["pixels"])
    assert rows["joints"]["vs_pixels"] is None  # no pixel baseline for landmarks
    write_report(tmp_path / "run", fakerun.summary(), hist)
    html = (tmp_path / "run" / "report.html").read_text()
    assert "Against raw pixels" in html and f"{pix['diff']:+.3f} [{pix['low']:+.3f}, {pix['high']:+.3f}]" in html
    page = check_page(tmp_path / "run" / "report.html", tmp_path / "browser")
    assert page.problems() == [], page.problems()  # both summary tables fit the page


def test_skipped_rounds_and_warnings_are_shown(tmp_path):
    """A secure-aggregation round the coordinator skipped says why, and quantisation warnings are on the page."""
    hist = fakerun.history(dp=True, secagg=True)
    hist[1].update(updated=False, reason="poisoning bound: a weight word above the cap")
    hist[0]["warnings"] = ["4.2 % of update coordinates were clipped"]
    out = tmp_path / "run"
    write_report(out, fakerun.summary(dp=True, secagg=True), hist)
    html = (out / "report.html").read_text()
    assert "skipped: poisoning bound: a weight word above the cap" in html  # per-round table
    assert "4.2 % of update coordinates were clipped" in html
    assert html.count("poisoning bound") == 2  # and in the secure-aggregation section


def test_privacy_section_shows_this_runs_epsilon_against_the_run_cap(tmp_path):
    """Issue 22 row 3: per hospital, epsilon spent this run, the run cap and the lifetime budget left."""
    from xr0_core.report import RunReport, privacy_section

    out = tmp_path / "run"
    rep = RunReport(out, fakerun.summary(dp=True), fakerun.history(dp=True))
    html = privacy_section(rep)
    assert "ε this run" in html and "run cap" in html and "budget left" in html
    # site01 after 3 rounds: 2.7 this run of its cap 4, 2.8 over all runs, 8 - 2.8 = 5.2 left.
    assert "<td class=text>site01</td><td>2.7</td><td>4</td><td>2.8</td><td>8</td><td>5.2</td>" in html
