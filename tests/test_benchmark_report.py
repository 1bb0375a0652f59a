"""The benchmark report is generated from a results dict, durations included."""

from __future__ import annotations

from benchmarks.report import write_report


def test_report_states_how_long_each_family_took(tmp_path):
    results = {
        "started": "2026-11-26T00:00:00+00:00",
        "quick": True,
        "machine": {"cpu": "test cpu", "cores": 2, "python": "3.11"},
        "families": {"serde": {"ratio": 2.0}},
        "seconds": {"serde": 12.3, "total": 90.0},
    }
    page = write_report(results, tmp_path / "r.json", docs=tmp_path / "docs").read_text()
    assert "quick mode" in page
    assert "The run took 1.5 minutes: serde 12 s." in page
    assert "## serde" in page
