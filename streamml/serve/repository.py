"""The models a server serves, each a live version that can be swapped for a checked new one."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from streamml.models import Model, OnnxModel
from streamml.serve.batcher import Batcher
from streamml.serve.errors import RequestError
from streamml.serve.metrics import ServerMetrics
from streamml.serve.tensors import datatype_of

__all__ = ["Loaded", "ModelRepository", "check_model"]

logger = logging.getLogger(__name__)


def check_model(model: Model) -> dict[str, tuple[str, list[int]]]:
    """Probe a model with one row of zeros; returns each output's datatype and shape.

    A version is served only once it has answered this probe: every declared
    output back, one row each, in a dtype the protocol can carry. Input
    dimensions the model leaves open are probed with size 1.

    Raises:
        ValueError: the model failed the probe, saying how.

    Examples:
        >>> from streamml.models import CallableModel
        >>> check_model(CallableModel(lambda x: x[:, :1], outputs="y", shape=(3,)))
        {'y': ('FP32', [-1, 1])}
        >>> check_model(CallableModel(lambda x: x[:0], outputs="y", shape=(3,)))
        Traceback (most recent call last):
        ...
        ValueError: the probe (one row of zeros) got 0 rows of output 'y'
    """
    zeros = {
        name: np.zeros((1, *(d or 1 for d in spec.shape or ())), dtype=spec.dtype)
        for name, spec in model.inputs.items()
    }
    try:
        outputs = model.predict(zeros)
    except Exception as exc:
        raise ValueError(f"the probe (one row of zeros) failed: {exc}") from exc
    found = {}
    for name in model.outputs:
        if name not in outputs:
            raise ValueError(f"the probe (one row of zeros) did not return output {name!r}")
        arr = np.asarray(outputs[name])
        if arr.ndim < 1 or arr.shape[0] != 1:
            raise ValueError(
                f"the probe (one row of zeros) got {arr.shape[0] if arr.ndim else 'no'} rows "
                f"of output {name!r}"
            )
        try:
            found[name] = (datatype_of(arr.dtype), [-1, *arr.shape[1:]])
        except ValueError as exc:
            raise ValueError(f"output {name!r}: {exc}") from None
    return found


def _output_shapes(model: Model, probed: dict[str, tuple[str, list[int]]]) -> dict[str, list[int]]:
    """Declared output shapes where the runtime knows them (ONNX), else the probe's."""
    shapes = {name: shape for name, (_, shape) in probed.items()}
    if isinstance(model, OnnxModel):
        declared = model.session.get_outputs()
        for name, arg in zip(model.outputs, declared, strict=True):
            dims = arg.shape[1:] if arg.shape else []
            shapes[name] = [-1, *(d if isinstance(d, int) and d > 0 else -1 for d in dims)]
    return shapes


@dataclass(frozen=True)
class Loaded:
    """One checked model version, its batcher and its protocol metadata."""

    name: str
    model: Model
    batcher: Batcher
    metadata: dict[str, Any]

    @property
    def version(self) -> str:
        """The version label on every answer this model gives."""
        return self.model.version


class ModelRepository:
    """Every model a server has, by name, and their live version swaps.

    A swap loads and probes the new version off the event loop while the old
    one keeps answering; only a version that passed :func:`check_model`
    replaces it. Requests already queued for the old version are answered by
    it (and labelled with it); the next ones go to the new one.

    Args:
        models: The models to serve, by name.
        metrics: Where loads and batch sizes are counted.
        max_batch: Most rows per model call (and per request).
        max_wait_s: Longest a request waits for its batch to fill, in seconds.
        files: The files models were loaded from, by name: :meth:`reload`
            loads them again, and :meth:`watch` whenever they change.
        loader: Builds a model from a file (default: an ONNX model with one
            intra-op thread, labelled ``stem@sha256[:8]``).
    """

    def __init__(
        self,
        models: Mapping[str, Model],
        *,
        metrics: ServerMetrics,
        max_batch: int,
        max_wait_s: float,
        files: Mapping[str, str | os.PathLike[str]] | None = None,
        loader: Callable[[Path], Model] | None = None,
    ) -> None:
        self._metrics = metrics
        self._max_batch = max_batch
        self._max_wait = max_wait_s
        self._files = {name: Path(p) for name, p in (files or {}).items()}
        unknown = sorted(set(self._files) - set(models))
        if unknown:
            raise ValueError(f"files names {unknown}, which are not among the models")
        self._loader = loader or _load_onnx
        self._live = {name: self._build(name, model) for name, model in models.items()}
        self._swapping: dict[str, asyncio.Lock] = {}

    @property
    def max_batch(self) -> int:
        """Most rows one request may carry."""
        return self._max_batch

    def names(self) -> list[str]:
        """The served model names, sorted."""
        return sorted(self._live)

    def get(self, name: str, version: str | None = None) -> Loaded:
        """The live version of a model.

        Raises:
            RequestError: 404 for an unknown model, or a version that is not
                the one served.
        """
        loaded = self._live.get(name)
        if loaded is None:
            raise RequestError(404, f"unknown model {name!r}; this server has {self.names()}")
        if version is not None and version != loaded.version:
            raise RequestError(
                404, f"model {name!r} has no version {version!r}; it serves {loaded.version!r}"
            )
        return loaded

    async def swap(self, name: str, model: Model) -> str:
        """Check ``model`` and make it the served version of ``name``; returns its version.

        Raises:
            RequestError: 404 for an unknown name; 400 if the new version failed
                its check (the old one keeps serving).
        """
        old = self.get(name)
        async with self._swapping.setdefault(name, asyncio.Lock()):
            loop = asyncio.get_running_loop()
            try:
                new = await loop.run_in_executor(None, self._build, name, model)
            except ValueError as exc:
                self._metrics.loads.labels(model=name, outcome="failed").inc()
                logger.warning(
                    "model %s: version %s refused, %s keeps serving: %s",
                    name,
                    model.version,
                    old.version,
                    exc,
                )
                raise RequestError(
                    400, f"model {name!r} version {model.version!r} failed its check: {exc}"
                ) from None
            self._live[name] = new
            self._metrics.loads.labels(model=name, outcome="ok").inc()
            logger.info("model %s: now serving %s (was %s)", name, new.version, old.version)
        await old.batcher.close()
        return new.version

    async def reload(self, name: str) -> str:
        """Load ``name`` again from its file and swap it in if it passes its check.

        Raises:
            RequestError: 404 for an unknown name, 400 if the model was not
                served from a file or the file does not load or pass its check.
        """
        self.get(name)
        path = self._files.get(name)
        if path is None:
            raise RequestError(400, f"model {name!r} was not served from a file; nothing to reload")
        loop = asyncio.get_running_loop()
        try:
            model = await loop.run_in_executor(None, self._loader, path)
        except (ValueError, OSError) as exc:
            self._metrics.loads.labels(model=name, outcome="failed").inc()
            raise RequestError(400, f"model {name!r}: cannot load {str(path)!r}: {exc}") from None
        if model.version == self.get(name).version:
            return model.version
        return await self.swap(name, model)

    async def watch(self, interval_s: float) -> None:
        """Reload every model whose file changes (size or modification time), until cancelled."""
        seen = {name: _stamp(path) for name, path in self._files.items()}
        while True:
            await asyncio.sleep(interval_s)
            for name, path in self._files.items():
                stamp = _stamp(path)
                if stamp is None or stamp == seen[name]:
                    continue
                seen[name] = stamp
                try:
                    await self.reload(name)
                except RequestError as exc:
                    logger.warning("watch: %s", exc)

    async def close(self) -> None:
        """Answer every queued request, then stop every model's thread."""
        for loaded in self._live.values():
            await loaded.batcher.close()

    def _build(self, name: str, model: Model) -> Loaded:
        probed = check_model(model)
        shapes = _output_shapes(model, probed)
        metadata = {
            "name": name,
            "versions": [model.version],
            "platform": "onnxruntime_onnx" if isinstance(model, OnnxModel) else "python",
            "inputs": [
                {
                    "name": n,
                    "datatype": datatype_of(spec.dtype),
                    "shape": _input_shape(spec.shape),
                }
                for n, spec in model.inputs.items()
            ],
            "outputs": [
                {"name": n, "datatype": probed[n][0], "shape": shapes[n]} for n in model.outputs
            ],
            "parameters": {"max_batch_size": self._max_batch},
        }
        rows = self._metrics.batch_rows.labels(model=name)
        requests = self._metrics.batch_requests.labels(model=name)

        def on_batch(n_rows: int, n_requests: int) -> None:
            rows.observe(n_rows)
            requests.observe(n_requests)

        batcher = Batcher(
            model, max_batch=self._max_batch, max_wait_s=self._max_wait, on_batch=on_batch
        )
        return Loaded(name, model, batcher, metadata)


def _input_shape(row: tuple[int | None, ...] | None) -> list[int]:
    """The protocol's shape of an input: -1 for the batch and every open dimension."""
    if row is None:
        return [-1]
    return [-1, *(-1 if d is None else d for d in row)]


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def _load_onnx(path: Path) -> Model:
    return OnnxModel(path, intra_op_threads=1)
