"""What the demo writes after a run: detection scores per detector, a windows file, a plot."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from operator import attrgetter
from pathlib import Path
from typing import Any

from examples.sensor_anomaly.features import FIELDS
from examples.sensor_anomaly.generate import TrueWindow
from streamml.evaluation import WindowScore, score_windows

__all__ = ["evaluate", "plot_sensor", "write_windows"]


def _parse_times(record: dict[str, Any]) -> dict[str, Any]:
    out = dict(record)
    for name in ("start", "end", "opened_at", "peak_time"):
        if isinstance(out.get(name), str):
            out[name] = datetime.fromisoformat(out[name])
    return out


def evaluate(
    alerts: Sequence[dict[str, Any]], truth: Sequence[TrueWindow]
) -> dict[str, WindowScore]:
    """Precision, recall and detection delay of each detector's windows against the injected ones."""
    detectors = sorted({a["detector"] for a in alerts} | {"isoforest", "zscore"})
    scores = {}
    for detector in detectors:
        mine = [_parse_times(a) for a in alerts if a["detector"] == detector]
        windows = [a for a in mine if a["type"] == "window"]
        opened = [a for a in mine if a["type"] == "opened"]
        scores[detector] = score_windows(windows, truth, opened, truth_key=attrgetter("sensor_id"))
    return scores


def write_windows(path: Path, alerts: Sequence[dict[str, Any]]) -> None:
    """Closed windows, one JSON object per line, in start order."""
    windows = sorted(
        (a for a in alerts if a["type"] == "window"), key=lambda a: (a["start"], a["key"])
    )
    path.write_text("".join(json.dumps(w, default=str) + "\n" for w in windows))


def plot_sensor(
    path: Path,
    events: Sequence[dict[str, Any]],
    truth: Sequence[TrueWindow],
    alerts: Sequence[dict[str, Any]],
) -> str:
    """Plot the sensor with the most injected anomalies, true and detected windows shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts: dict[str, int] = {}
    for w in truth:
        counts[w.sensor_id] = counts.get(w.sensor_id, 0) + 1
    sensor = max(counts, key=counts.get) if counts else events[0]["sensor_id"]
    mine = [e for e in events if e["sensor_id"] == sensor]
    times = [e["ts"] for e in mine]
    fig, axes = plt.subplots(len(FIELDS), 1, sharex=True, figsize=(13, 7.5))
    colors = {"isoforest": "tab:blue", "zscore": "tab:green"}
    for ax, name in zip(axes, FIELDS):
        ax.plot(times, [e[name] for e in mine], lw=0.6, color="black")
        ax.set_ylabel(name)
        for w in truth:
            if w.sensor_id == sensor:
                ax.axvspan(w.start, w.end, color="tab:red", alpha=0.25, lw=0)
                if name == w.field:
                    ax.annotate(
                        w.kind,
                        (w.start, 1.0),
                        xycoords=("data", "axes fraction"),
                        fontsize=8,
                        color="tab:red",
                        va="top",
                    )
        for a in alerts:
            if a["type"] == "window" and a["key"] == sensor:
                start, end = _parse_times(a)["start"], _parse_times(a)["end"]
                lane = (0.0, 0.08) if a["detector"] == "isoforest" else (0.08, 0.16)
                ax.axvspan(
                    start, end, ymin=lane[0], ymax=lane[1], color=colors[a["detector"]], alpha=0.9
                )
    axes[0].set_title(
        f"{sensor}: injected anomalies (red), detected windows: IsolationForest (blue band), z-score (green band)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return sensor
