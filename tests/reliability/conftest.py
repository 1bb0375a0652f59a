"""Fixtures of the reliability tests: the served ONNX model, built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.reliability.harness import build_model


@pytest.fixture(scope="session")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The anomaly-score model (skl2onnx from generated data), as an ONNX file."""
    return build_model(tmp_path_factory.mktemp("reliability-model") / "v1.onnx")
