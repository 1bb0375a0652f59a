"""Model runtimes behind one small protocol: ONNX Runtime, plain Python functions, remote services.

:class:`Model` is the interface the inference operator
(:func:`streamml.operators.infer.infer`) calls: named NumPy batches in, named
NumPy arrays out, plus the model's declared inputs and a ``version`` label.
:class:`OnnxModel`, :class:`CallableModel`, :class:`TfliteModel` (LiteRT, the
``tflite`` extra), :class:`PmmlModel` (JPMML-Evaluator, the ``pmml`` extra) and
:class:`RemoteModel` (a model served over HTTP, :mod:`streamml.models.remote`)
implement it; a user's own runtime only needs the same four members; see
docs/models.md.
"""

from streamml.models.callable import CallableModel
from streamml.models.onnx import OnnxModel, default_providers
from streamml.models.pmml import PmmlModel
from streamml.models.protocol import (
    Model,
    ModelInputError,
    ModelUnavailable,
    RowErrors,
    TensorSpec,
    as_feeds,
)
from streamml.models.remote import RemoteModel
from streamml.models.tflite import TfliteModel

__all__ = [
    "CallableModel",
    "Model",
    "ModelInputError",
    "ModelUnavailable",
    "OnnxModel",
    "PmmlModel",
    "RemoteModel",
    "RowErrors",
    "TensorSpec",
    "TfliteModel",
    "as_feeds",
    "default_providers",
]
