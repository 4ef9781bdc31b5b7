"""The report of a large federation stays readable (issue 27): above ``MANY_SITES`` hospitals the per-hospital
tables are folded behind aggregated ones, the loss plot shows the median across hospitals, and a 3-hospital
report is unchanged (no folding)."""

from __future__ import annotations

import re

from xr0_core.report import MANY_SITES, write_report


def _run(n_sites: int, sampled: int):
    names = [f"site{i:03d}" for i in range(n_sites)]
    sites = [{"name": n, "images": 40 + i % 7, "by_anatomy": {"chest": 30 + i % 7, "hand": 10} if i % 2 else
              {"chest": 40 + i % 7}} for i, n in enumerate(names)]
    history = []
    for rnd in (1, 2):
        picked = names[(rnd - 1) * sampled: rnd * sampled]
        history.append({"round": rnd, "kind": "train", "updated": True, "seconds": 3.0,
                        "metrics": {"loss": 9.0 - rnd, "num-examples": 100.0},
                        "sites": [{"node_id": 1000 + i, "name": n, "status": "ok", "reason": "",
                                   "metrics": {"loss": 9.0 - rnd + i * 1e-3, "num-examples": 40.0,
                                               "health/rankme-cls": 20.0 + i % 5, "health/feature-std": 0.05}}
                                  for i, n in enumerate(picked)]})
    summary = {"status": "completed", "rounds_completed": 2, "run_key": "k", "sites": sites,
               "config": {"preset": "cpu-tiny", "federation.rounds": 2, "train.local-steps": 1}}
    return summary, history


def _visible(html: str) -> str:
    """The page with every folded block removed: what a reader sees before clicking."""
    return re.sub(r"<details>.*?</details>", "", html, flags=re.S)


def test_a_thousand_hospitals_fold_behind_aggregated_tables(tmp_path):
    summary, history = _run(1000, 50)
    html = write_report(tmp_path, summary, history).read_text()
    shown = _visible(html)
    assert shown.count("<tr") < 60, shown.count("<tr")  # a page, not 1,000 rows
    assert len(set(re.findall(r"<td class=text>(site\d+)</td>", html))) == 1000  # every hospital is still there, folded
    hospitals = shown[shown.index("<h2>Hospitals</h2>"):]
    assert "1000 hospitals" in hospitals and "<td class=text>chest</td><td>1000</td>" in hospitals  # every one holds chest
    assert "<td class=text>hand</td><td>500</td>" in hospitals
    assert "every hospital (1000)" in html
    assert "median of 100 hospitals" not in html  # the legend is in the PNG, not the page
    assert (tmp_path / "curve_loss.png").stat().st_size > 0
    health = shown[shown.index("<h2>SSL health"):]
    assert "min / median / max over hospitals" in health and "every hospital (100)" in html


def test_a_small_federation_keeps_its_plain_tables(tmp_path):
    summary, history = _run(3, 3)
    html = write_report(tmp_path, summary, history).read_text()
    assert 3 <= MANY_SITES
    assert "every hospital" not in html
    assert "<td class=text>site001</td>" in _visible(html)
