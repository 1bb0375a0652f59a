"""Train the sensor model: an IsolationForest on generated normal data, converted to ONNX.

    python -m examples.sensor_anomaly.model            # build (or reuse) the cached model
    python -m examples.sensor_anomaly.model --force    # rebuild

The training features come from running :func:`features.add_features` — the
serving code — over a generated fleet with no anomalies. The forest is
converted with skl2onnx and checked against scikit-learn on held-out rows.
Next to the ``.onnx`` file, ``isoforest.json`` records the score quantiles on
normal data, from which the pipeline takes its alert thresholds.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import bytewax.operators as op
import numpy as np
import polars as pl
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main

from examples.sensor_anomaly.features import FEATURE_NAMES, add_features
from examples.sensor_anomaly.generate import generate_fleet

__all__ = ["ModelFiles", "build_model", "DEFAULT_DIR"]

DEFAULT_DIR = Path("out/sensor_anomaly/model")
_TRAIN = {"n_events": 60_000, "n_sensors": 20, "seed": 11, "trees": 100, "max_samples": 512}


@dataclass(frozen=True)
class ModelFiles:
    """The ONNX model and the score quantiles of normal data."""

    onnx: Path
    quantiles: dict[str, float]

    @property
    def version(self) -> str:
        return self.onnx.stem


def _training_features(n_events: int, n_sensors: int, seed: int) -> np.ndarray:
    fleet = generate_fleet(n_events, n_sensors=n_sensors, anomalies_per_sensor=0.0, seed=seed)
    frames = [pl.from_dicts(fleet.events[i : i + 5000]) for i in range(0, len(fleet.events), 5000)]
    flow = Dataflow("sensor_training_features")
    out: list[pl.DataFrame] = []
    op.output(
        "rows",
        add_features("features", op.input("normal", flow, TestingSource(frames))).oks,
        TestingSink(out),
    )
    run_main(flow)
    # as served: thin baselines score 0. Sorted, so the model does not depend on the
    # order in which the feature step's shards emit (it changes with their number).
    warm = pl.concat(out).filter(pl.col("warm")).sort("sensor_id", "ts")
    return warm.select(FEATURE_NAMES).to_numpy().astype(np.float32)


def _fingerprint() -> str:
    src = "".join(
        Path(__file__).with_name(name).read_text()
        for name in ("features.py", "generate.py", "model.py")
    )
    return hashlib.sha256((src + json.dumps(_TRAIN, sort_keys=True)).encode()).hexdigest()[:10]


def build_model(directory: Path = DEFAULT_DIR, *, force: bool = False, log=print) -> ModelFiles:
    """Train, convert and save the model unless a matching one is cached in ``directory``."""
    fingerprint = _fingerprint()
    onnx_path = directory / f"isoforest-{fingerprint}.onnx"
    meta_path = directory / "isoforest.json"
    if not force and onnx_path.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("fingerprint") == fingerprint:
            return ModelFiles(onnx_path, meta["quantiles"])

    from skl2onnx import to_onnx
    from sklearn.ensemble import IsolationForest

    start = time.perf_counter()
    log(f"training the IsolationForest on {_TRAIN['n_events']:,} normal readings ...")
    x = _training_features(_TRAIN["n_events"], _TRAIN["n_sensors"], _TRAIN["seed"])
    rng = np.random.default_rng(_TRAIN["seed"])
    rng.shuffle(x)
    train, held_out = x[: int(len(x) * 0.8)], x[int(len(x) * 0.8) :]
    forest = IsolationForest(
        n_estimators=_TRAIN["trees"], max_samples=_TRAIN["max_samples"], random_state=_TRAIN["seed"]
    ).fit(train)
    onnx_model = to_onnx(forest, train[:1], target_opset={"": 17, "ai.onnx.ml": 3})

    import onnxruntime as ort

    session = ort.InferenceSession(
        onnx_model.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    onnx_scores = session.run(["scores"], {session.get_inputs()[0].name: held_out})[0].ravel()
    sk_scores = forest.decision_function(held_out)
    if not np.allclose(onnx_scores, sk_scores, atol=1e-4):
        raise RuntimeError("the ONNX forest disagrees with scikit-learn on held-out rows")
    anomaly = -onnx_scores  # higher = more anomalous
    quantiles = {f"q{q}": float(np.quantile(anomaly, q / 1000)) for q in (500, 900, 990, 999)}
    quantiles["max"] = float(anomaly.max())

    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob("isoforest-*.onnx"):
        old.unlink()
    onnx_path.write_bytes(onnx_model.SerializeToString())
    meta_path.write_text(
        json.dumps(
            {
                "fingerprint": fingerprint,
                "features": FEATURE_NAMES,
                "train_rows": len(train),
                "quantiles": quantiles,
                "params": _TRAIN,
            },
            indent=2,
        )
        + "\n"
    )
    log(
        f"saved {onnx_path} ({time.perf_counter() - start:.1f} s; normal-data score p99.9 = {quantiles['q999']:.3f})"
    )
    return ModelFiles(onnx_path, quantiles)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m examples.sensor_anomaly.model",
        description="Train the sensor IsolationForest on generated normal data and save it as ONNX (cached).",
    )
    parser.add_argument(
        "--dir",
        type=Path,
        default=DEFAULT_DIR,
        help="where to keep the model (default: %(default)s)",
    )
    parser.add_argument(
        "--force", action="store_true", help="rebuild even if a matching model is cached"
    )
    args = parser.parse_args(argv)
    files = build_model(args.dir, force=args.force)
    print(f"model {files.onnx} ready; normal-data score quantiles: {files.quantiles}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
