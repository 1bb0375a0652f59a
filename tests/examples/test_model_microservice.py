"""The model-microservice example with a small N: the service in its own process, three contenders agree."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_remote_in_process_and_per_event_scores_agree_and_every_reading_is_accounted_for(
    tmp_path: Path,
) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "examples.model_microservice",
            "--events",
            "4000",
            "--rest-events",
            "150",
            "--quiet",
            "--out",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "events/s" in proc.stdout
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["events_in"] == 4000
    assert summary["scored"] == {
        "per_event_rest": 150,
        "streamml_remote": 4000,
        "streamml_in_process": 4000,
    }
    assert summary["dead_lettered"] == {"streamml_remote": 0, "streamml_in_process": 0}
    assert summary["accounted_for"]
    assert summary["same_scores"] == {"remote_vs_in_process": True, "rest_vs_in_process": True}
    # About one machine in twenty runs hot half the time: the model flags some readings, not most.
    assert 0 < summary["flagged"] < 4000 * 0.2
    assert (tmp_path / "model" / "failure_risk.onnx").exists()
