"""PMML models run by JPMML-Evaluator, behind the :class:`~streamml.models.Model` protocol.

PMML is XML, so it needs an evaluator. streamml uses JPMML-Evaluator
(``jpmml-evaluator`` on PyPI, the ``pmml`` extra): the reference Java
implementation of PMML 4.4, maintained, covering every model element
(regressions, trees, ensembles, neural networks, scorecards, ...) and the
transformations exporters write around them, so a file from any exporter —
nyoka, sklearn2pmml, SAS, KNIME, R — scores as its author meant. It runs
in-process on a JVM started by JPype (Java 11 or newer must be installed),
and a whole batch is one Java call. Two other routes were weighed:
``pypmml`` runs PMML4S behind a Py4J socket gateway (a second process and a
round trip per call), and converting PMML to scikit-learn
(``sklearn-pmml-model``) and then to ONNX is faster per row but covers only
some model types and none of PMML's general transformations, so it would
refuse or mis-score files that the standard allows.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from streamml.models._file import FileModel
from streamml.models.protocol import TensorSpec, as_feeds

__all__ = ["PmmlModel"]

logger = logging.getLogger(__name__)

# PMML data types a batch can carry, and the NumPy dtype each field takes.
_PMML_DTYPES = {
    "double": np.float64,
    "float": np.float64,
    "integer": np.int64,
    "boolean": np.bool_,
}


def _missing_as_none(column: np.ndarray) -> list[Any]:
    """A column as the Python values JPMML takes, NaN as a missing value (None)."""
    values = column.tolist()
    if column.dtype.kind == "f" and np.isnan(column).any():
        values = [None if v != v else v for v in values]
    return values


def _make_evaluator(data: bytes) -> Any:
    try:
        from jpmml_evaluator import make_evaluator
    except ImportError as exc:
        raise ImportError(
            "PmmlModel needs JPMML-Evaluator: pip install 'streamml[pmml]' "
            "(the jpmml-evaluator wheel; Java 11 or newer must be installed)"
        ) from exc
    try:
        import jpype

        if not jpype.isJVMStarted():
            jpype.getDefaultJVMPath()  # raises when no Java runtime can be found
    except Exception as exc:  # JPype's JVMNotFoundException and friends
        raise ValueError(
            f"PmmlModel needs a Java 11+ runtime (set JAVA_HOME or put java on PATH): {exc}"
        ) from exc
    return make_evaluator(data, backend="jpype").verify()


class PmmlModel(FileModel):
    """A PMML document scored by JPMML-Evaluator, one Java call per batch.

    Use it for models exported as PMML — from scikit-learn by nyoka or
    sklearn2pmml, from Spark, R, SAS or KNIME. By default each of the
    model's numeric input fields is one input of the same name taking one
    value per row (a dict of columns, as ``infer`` builds from
    ``inputs={"age": "age", ...}``); with ``vector`` the fields are one input
    of that name taking a matrix whose columns are the fields in the
    document's order (as ``infer`` builds from a list of columns). Outputs are
    the model's target and output fields (a classifier's label and
    ``probability_*`` fields), by name. A row the evaluator refuses (a value
    outside the field's valid range, for example) fails the call with the
    evaluator's reason, so ``infer`` finds the row and sends it to ``errs``.
    A NaN is PMML's missing value: the document's missing-value rules apply,
    and an output the model cannot compute is ``None`` (``infer`` rejects
    non-finite inputs before the model sees them).

    The document is loaded and verified (its ``ModelVerification`` records,
    when it has any, are scored and compared) when the model is built; no
    warm-up row is scored, since zeros may be invalid values for its fields.

    Args:
        source: A path to a ``.pmml`` file, or the document's bytes.
        version: The label attached to predictions; defaults to the file
            stem (when loaded from a path) plus the first 8 hex digits of the
            SHA-256 of the bytes.
        vector: Take every input field as one matrix input of this name.
        output_names: The model's field names mapped to the names
            :meth:`predict` returns (``{"probability_1": "fraud"}``); fields
            not listed keep their own names.
        parallelism: Java threads scoring one batch (``-1``: the JVM's
            common pool). The default 1 leaves parallelism to Bytewax workers.

    Raises:
        ImportError: JPMML-Evaluator is not installed (``pip install 'streamml[pmml]'``).
        ValueError: no Java runtime, a document that does not load or verify,
            an input field that is not numeric or boolean, or a name mapping
            that refers to a field the model does not have.

    Examples:
        >>> pmml = b'''<PMML xmlns="http://www.dmg.org/PMML-4_4" version="4.4">
        ...   <Header/>
        ...   <DataDictionary>
        ...     <DataField name="x" optype="continuous" dataType="double"/>
        ...     <DataField name="y" optype="continuous" dataType="double"/>
        ...   </DataDictionary>
        ...   <RegressionModel functionName="regression">
        ...     <MiningSchema>
        ...       <MiningField name="x"/><MiningField name="y" usageType="target"/>
        ...     </MiningSchema>
        ...     <RegressionTable intercept="1"><NumericPredictor name="x" coefficient="2"/>
        ...     </RegressionTable>
        ...   </RegressionModel>
        ... </PMML>'''
        >>> model = PmmlModel(pmml, version="line-1")
        >>> model.inputs, model.outputs
        ({'x': TensorSpec(dtype=dtype('float64'), shape=())}, ('y',))
        >>> model.predict(np.array([0.0, 1.5]))
        {'y': array([1., 4.])}
    """

    _kind = "PMML"

    def __init__(
        self,
        source: str | os.PathLike[str] | bytes,
        *,
        version: str | None = None,
        vector: str | None = None,
        output_names: Mapping[str, str] | None = None,
        parallelism: int = 1,
    ) -> None:
        if parallelism == 0 or parallelism < -1:
            raise ValueError(
                f"parallelism must be >= 1, or -1 for the JVM's pool; got {parallelism}"
            )
        config = {
            "vector": vector,
            "output_names": dict(output_names or {}),
            "parallelism": parallelism,
        }
        self._read(source, version=version, config=config)

    def _load(self) -> None:
        cfg = self._config
        try:
            self._evaluator = _make_evaluator(self._bytes)
        except (ImportError, ValueError):
            raise  # already say what to install or fix
        except Exception as exc:  # JPMML's JavaError, XML errors
            raise ValueError(f"cannot load PMML model {self._version!r}: {exc}") from exc
        fields: dict[str, np.dtype] = {}
        for field in self._evaluator.getInputFields():
            name, kind = field.getName(), field.getDataType()
            if kind not in _PMML_DTYPES:
                raise ValueError(
                    f"PMML input field {name!r} is of type {kind}; PmmlModel takes "
                    f"{', '.join(_PMML_DTYPES)} fields"
                )
            fields[name] = np.dtype(_PMML_DTYPES[kind])
        self._fields = fields
        if cfg["vector"] is not None:
            self._inputs = {cfg["vector"]: TensorSpec(np.dtype(np.float64), (len(fields),))}
        else:
            self._inputs = {name: TensorSpec(dtype, ()) for name, dtype in fields.items()}
        names = [f.getName() for f in self._evaluator.getTargetFields()]
        names += [f.getName() for f in self._evaluator.getOutputFields()]
        self._field_outputs = names
        self._outputs = self._mapped_outputs(names)
        logger.info("loaded PMML model %s", self._version)

    def predict(self, inputs: Mapping[str, np.ndarray] | np.ndarray) -> dict[str, Any]:
        """Score one batch; returns every target and output field by name.

        Raises :class:`~streamml.models.ModelInputError` when the batch does not
        match the declared inputs, and ``ValueError`` naming the first row the
        evaluator refused.
        """
        from jpmml_evaluator import PythonEvaluatorUtil  # present: the model loaded

        feeds = as_feeds(self._inputs, inputs)
        vector = self._config["vector"]
        if vector is not None:
            matrix = feeds[vector]
            columns = {
                name: matrix[:, j].astype(dtype, copy=False)
                for j, (name, dtype) in enumerate(self._fields.items())
            }
        else:
            columns = feeds
        # The columnar call Evaluator.evaluateAll makes, without its pandas DataFrames in and
        # out: they cost 2-3 times the Java call itself (about 9 of 13 ms for one row).
        data = [_missing_as_none(column) for column in columns.values()]
        results = PythonEvaluatorUtil.evaluateAll(
            self._evaluator.backend,
            self._evaluator.javaEvaluator,
            {"columns": list(columns), "data": data},
            None,
            self._config["parallelism"],
        )
        errors = results["errors"]
        if errors is not None:
            failed = [i for i, error in enumerate(errors) if error is not None]
            if failed:
                raise ValueError(
                    f"PMML model {self._version!r} refused {len(failed)} row(s); "
                    f"row {failed[0]}: {errors[failed[0]]}"
                )
        by_name = dict(zip(results["columns"], results["data"], strict=True))
        return {
            ours: np.asarray(by_name[name])
            for name, ours in zip(self._field_outputs, self._outputs, strict=True)
        }
