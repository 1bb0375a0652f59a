"""The failure-risk model: an MLP 4→64→64→2 trained on generated telemetry, saved as ONNX.

Training runs in a child process (``python -m examples.model_microservice.model
PATH``): scikit-learn and skl2onnx leave ~100,000 objects on the heap of a
process that imports them, which every garbage collection of the speed
comparison would scan, and a deployed scorer never imports them either.
"""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def build_model(path: Path) -> Path:
    """The model's ONNX file at ``path``, trained (in a child process) if it is not there yet."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "examples.model_microservice.model", str(path)],
            cwd=ROOT,
            check=True,
        )
    return path


def _train() -> bytes:
    from skl2onnx import to_onnx
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(7)
    n = 6_000
    strain = (rng.random(n) < 0.1).astype(np.float32)
    x = np.column_stack(
        [
            rng.normal(70 + 12 * strain, 3),
            rng.normal(2 + 1.5 * strain, 0.3),
            rng.normal(5, 0.1, n),
            rng.normal(1500 - 200 * strain, 40),
        ]
    ).astype(np.float32)
    model = make_pipeline(
        StandardScaler(), MLPClassifier(hidden_layer_sizes=(64, 64), max_iter=40, random_state=0)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(x, strain.astype(np.int64))
    mlp = model.steps[-1][1]
    return to_onnx(model, x[:1], options={id(mlp): {"zipmap": False}}).SerializeToString()


if __name__ == "__main__":
    Path(sys.argv[1]).write_bytes(_train())
