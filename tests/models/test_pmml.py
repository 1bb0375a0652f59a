"""PmmlModel: PMML written by nyoka from scikit-learn models, scored by JPMML-Evaluator in batches.

The reference is the source model's own ``predict_proba`` on held-out rows the
test generates; a hand-written document with a valid range shows a refused
row going to ``errs`` while the rest of its batch is scored.
"""

from __future__ import annotations

import pickle
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

from streamml.models import Model, ModelInputError, TensorSpec

pytest.importorskip("jpmml_evaluator")
pytest.importorskip("nyoka")

from streamml.models.pmml import PmmlModel  # noqa: E402

FIELDS = ["amount", "age", "hour"]

# y = 2 x + 1 for x in [0, 10]; any other x is an invalid value the evaluator refuses.
RANGED = b"""<PMML xmlns="http://www.dmg.org/PMML-4_4" version="4.4">
  <Header/>
  <DataDictionary>
    <DataField name="x" optype="continuous" dataType="double">
      <Interval closure="closedClosed" leftMargin="0" rightMargin="10"/>
    </DataField>
    <DataField name="y" optype="continuous" dataType="double"/>
  </DataDictionary>
  <RegressionModel functionName="regression">
    <MiningSchema><MiningField name="x"/><MiningField name="y" usageType="target"/></MiningSchema>
    <RegressionTable intercept="1"><NumericPredictor name="x" coefficient="2"/></RegressionTable>
  </RegressionModel>
</PMML>"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, object, np.ndarray]:
    """(a .pmml file nyoka wrote, the scikit-learn pipeline it came from, held-out rows)."""
    import pandas as pd
    from nyoka import skl_to_pmml
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.pipeline import Pipeline

    rng = np.random.default_rng(3)
    x = np.column_stack(
        [rng.exponential(50.0, 700), rng.integers(18, 80, 700), rng.integers(0, 24, 700)]
    ).astype(np.float64)
    y = ((x[:, 0] > 60) & ((x[:, 2] < 6) | (x[:, 1] < 30))).astype(int)
    y ^= rng.random(700) < 0.05  # label noise: probabilities strictly between 0 and 1
    frame = pd.DataFrame(x[:500], columns=FIELDS)
    pipeline = Pipeline(
        [("forest", RandomForestClassifier(n_estimators=8, max_depth=4, random_state=0))]
    )
    pipeline.fit(frame, y[:500])
    path = tmp_path_factory.mktemp("pmml") / "fraud.pmml"
    skl_to_pmml(pipeline, FIELDS, "label", str(path))
    return path, pipeline, x[500:]


def test_scores_match_the_source_model(trained) -> None:
    path, pipeline, held_out = trained
    model = PmmlModel(path)
    assert isinstance(model, Model)
    assert model.version.startswith("fraud@")
    assert model.inputs == {name: TensorSpec(np.dtype("float64"), ()) for name in FIELDS}
    assert model.outputs == ("label", "probability_0", "probability_1", "predicted_label")
    out = model.predict({name: held_out[:, j] for j, name in enumerate(FIELDS)})
    want = pipeline.predict_proba(held_out)
    assert out["probability_1"].shape == (len(held_out),)
    np.testing.assert_allclose(out["probability_1"], want[:, 1], atol=1e-9)
    np.testing.assert_allclose(out["probability_0"], want[:, 0], atol=1e-9)
    assert (out["label"] == pipeline.predict(held_out)).all()


def test_vector_input_renamed_outputs_and_pickling(trained) -> None:
    path, pipeline, held_out = trained
    model = PmmlModel(path.read_bytes(), vector="features", output_names={"probability_1": "fraud"})
    assert model.inputs == {"features": TensorSpec(np.dtype("float64"), (3,))}
    assert "fraud" in model.outputs and "probability_1" not in model.outputs
    copy = pickle.loads(pickle.dumps(model))
    assert copy.version == model.version
    for size in (1, 9, 200):
        out = copy.predict(held_out[:size].astype(np.float32))  # float32 is cast
        np.testing.assert_allclose(
            out["fraud"], pipeline.predict_proba(held_out[:size])[:, 1], atol=1e-6
        )


def test_bad_documents_names_and_batches_are_refused_with_reasons(trained, tmp_path) -> None:
    path, _, _ = trained
    with pytest.raises(ValueError, match="cannot load PMML model"):
        PmmlModel(b"<PMML>not a model</PMML>")
    with pytest.raises(ValueError, match="cannot read PMML model"):
        PmmlModel(tmp_path / "missing.pmml")
    with pytest.raises(ValueError, match="does not output"):
        PmmlModel(path, output_names={"nope": "y"})
    with pytest.raises(ValueError, match="parallelism"):
        PmmlModel(path, parallelism=0)
    text = RANGED.replace(
        b'name="x" optype="continuous" dataType="double"',
        b'name="x" optype="categorical" dataType="string"',
    )
    with pytest.raises(ValueError, match="input field 'x' is of type string"):
        PmmlModel(text.replace(b"<Interval", b"<!--").replace(b'rightMargin="10"/>', b"-->"))
    model = PmmlModel(path)
    with pytest.raises(ModelInputError, match="missing model input"):
        model.predict({"amount": np.ones(2)})
    ranged = PmmlModel(RANGED)
    with pytest.raises(ValueError, match=r"refused 1 row\(s\); row 2: .*x"):
        ranged.predict(np.array([0.0, 10.0, 20.0]))
    np.testing.assert_allclose(ranged.predict(np.array([0.0, 10.0]))["y"], [1.0, 21.0])
    # NaN is PMML's missing value: no prediction for that row, the others scored
    assert ranged.predict(np.array([1.0, np.nan, 2.0]))["y"].tolist() == [3.0, None, 5.0]


def test_infer_scores_a_stream_and_sends_refused_rows_to_errs() -> None:
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.testing import TestingSink, TestingSource, run_main
    from streamml.operators.infer import infer

    xs = [0.5 * i for i in range(30)]  # 0 .. 14.5: the 9 values above 10 are refused
    flow = Dataflow("pmml_infer")
    out = infer(
        "score",
        op.input("in", flow, TestingSource([(str(i % 2), {"x": x}) for i, x in enumerate(xs)])),
        PmmlModel(RANGED),
        inputs={"x": "x"},
        max_wait=timedelta(milliseconds=5),
    )
    oks, errs = [], []
    op.output("oks", out.oks, TestingSink(oks))
    op.output("errs", out.errs, TestingSink(errs))
    run_main(flow)
    assert sorted(event["x"] for _, event in oks) == [x for x in xs if x <= 10]
    assert all(event["y"] == 2 * event["x"] + 1 for _, event in oks)
    assert len(errs) == 9


def test_calls_from_several_threads_each_get_their_own_batch_scored() -> None:
    from concurrent.futures import ThreadPoolExecutor

    model = PmmlModel(RANGED)
    xs = np.linspace(0.0, 10.0, 200)
    sizes = [1 + (i * 37) % 150 for i in range(64)]
    with ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(lambda n: model.predict(xs[:n])["y"], sizes))
    for n, out in zip(sizes, outs):
        np.testing.assert_allclose(out, 2 * xs[:n] + 1)
