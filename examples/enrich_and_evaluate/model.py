"""Train the two fraud models, convert them to ONNX, and cache them.

    python -m examples.enrich_and_evaluate.model            # build (or reuse) the cached models
    python -m examples.enrich_and_evaluate.model --force    # rebuild

- ``v1-logreg``: standard scaling + logistic regression (what is in production);
- ``v2-gbm``: gradient-boosted trees, which can learn the interactions the
  generated fraud depends on (the rollout candidate).

Both are trained on the same generated transactions (another seed than the
demo's), enriched with their account rows in Python and featurized as frames by
:func:`features.add_features` — the serving code. They are converted with
skl2onnx (ZipMap off, so ``probabilities`` is a plain float tensor), checked
against scikit-learn on held-out rows, and saved with a JSON card of their
held-out precision and recall.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bytewax.operators as op
import numpy as np
import polars as pl
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main

from examples.enrich_and_evaluate.data import generate
from examples.enrich_and_evaluate.features import SCHEMA, add_features

__all__ = ["DEFAULT_DIR", "ModelFiles", "build_models", "featurize_offline"]

DEFAULT_DIR = Path("out/enrich_and_evaluate/models")
_TRAIN = {"n_transactions": 60_000, "seed": 101, "threshold": 0.3}


@dataclass(frozen=True)
class ModelFiles:
    """The two model files, their versions, and their held-out scores."""

    v1: Path
    v2: Path
    card: dict[str, Any]

    @property
    def versions(self) -> tuple[str, str]:
        return self.v1.stem, self.v2.stem


def featurize_offline(
    accounts: list[tuple[str, dict[str, Any] | None]], transactions: list[dict[str, Any]]
) -> tuple[list[str], np.ndarray]:
    """Join transactions with the last row of their account and featurize them as served.

    Returns the ``tx_id`` of every transaction that has an account, and its feature rows.
    """
    table: dict[str, Any] = {}
    for key, row in accounts:
        table[key] = row
    enriched = pl.DataFrame(
        [
            {**t, **table[t["account_id"]]}
            for t in transactions
            if table.get(t["account_id"]) is not None
        ],
        infer_schema_length=None,
    )
    flow = Dataflow("fraud_training_features")
    frames: list[pl.DataFrame] = []
    out = add_features(
        "features", op.input("enriched", flow, TestingSource(enriched.iter_slices(5000)))
    )
    op.output("frames", out.oks, TestingSink(frames))
    run_main(flow)
    done = pl.concat(frames)
    return done["tx_id"].to_list(), done["features"].to_numpy()


def _fingerprint() -> str:
    src = "".join(
        Path(__file__).with_name(name).read_text()
        for name in ("data.py", "features.py", "model.py")
    )
    return hashlib.sha256((src + json.dumps(_TRAIN, sort_keys=True)).encode()).hexdigest()[:10]


def _scores(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, float]:
    from sklearn.metrics import precision_score, recall_score, roc_auc_score

    pred = (p >= threshold).astype(int)
    return {
        "precision": round(float(precision_score(y, pred, zero_division=0)), 4),
        "recall": round(float(recall_score(y, pred, zero_division=0)), 4),
        "roc_auc": round(float(roc_auc_score(y, p)), 4),
    }


def build_models(directory: Path = DEFAULT_DIR, *, force: bool = False, log=print) -> ModelFiles:
    """Train, convert and save both models unless matching ones are cached in ``directory``."""
    fingerprint = _fingerprint()
    card_path = directory / "models.json"
    v1, v2 = directory / "v1-logreg.onnx", directory / "v2-gbm.onnx"
    if not force and v1.exists() and v2.exists() and card_path.exists():
        card = json.loads(card_path.read_text())
        if card.get("fingerprint") == fingerprint:
            return ModelFiles(v1, v2, card)

    import onnxruntime as ort
    from skl2onnx import to_onnx
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    start = time.perf_counter()
    log(f"training the fraud models on {_TRAIN['n_transactions']:,} generated transactions ...")
    data = generate(_TRAIN["n_transactions"], seed=_TRAIN["seed"])
    ids, x = featurize_offline(data.accounts, data.transactions)
    y = np.array([data.is_fraud[i] for i in ids])
    cut = int(len(x) * 0.75)
    candidates = {
        v1: make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)),
        v2: GradientBoostingClassifier(n_estimators=150, max_depth=3, random_state=0),
    }
    card: dict[str, Any] = {
        "fingerprint": fingerprint,
        "features": SCHEMA.names,
        "train_rows": cut,
        "fraud_rate": round(float(y.mean()), 4),
        "params": _TRAIN,
        "held_out": {},
    }
    directory.mkdir(parents=True, exist_ok=True)
    for path, estimator in candidates.items():
        estimator.fit(x[:cut], y[:cut])
        onx = to_onnx(
            estimator,
            x[:1],
            options={id(estimator): {"zipmap": False}},
            target_opset={"": 17, "ai.onnx.ml": 3},
        )
        session = ort.InferenceSession(onx.SerializeToString(), providers=["CPUExecutionProvider"])
        p_onnx = session.run(["probabilities"], {session.get_inputs()[0].name: x[cut:]})[0][:, 1]
        p_sk = estimator.predict_proba(x[cut:])[:, 1]
        if not np.allclose(p_onnx, p_sk, atol=1e-4):
            raise RuntimeError(f"the ONNX {path.stem} disagrees with scikit-learn on held-out rows")
        path.write_bytes(onx.SerializeToString())
        card["held_out"][path.stem] = _scores(y[cut:], p_onnx, _TRAIN["threshold"])
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    log(f"saved {v1} and {v2} ({time.perf_counter() - start:.1f} s): {card['held_out']}")
    return ModelFiles(v1, v2, card)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m examples.enrich_and_evaluate.model",
        description="Train the two fraud models on generated transactions and save them as ONNX (cached).",
    )
    parser.add_argument(
        "--dir",
        type=Path,
        default=DEFAULT_DIR,
        help="where to keep the models (default: %(default)s)",
    )
    parser.add_argument(
        "--force", action="store_true", help="rebuild even if matching models are cached"
    )
    args = parser.parse_args(argv)
    files = build_models(args.dir, force=args.force)
    print(f"models {files.v1} and {files.v2} ready; held-out scores: {files.card['held_out']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
