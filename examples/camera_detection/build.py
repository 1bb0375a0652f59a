"""Prepare the PP-OCRv4 text detector and recogniser from the rapidocr-onnxruntime wheel, cached.

The models are the real pretrained PP-OCRv4 networks (PaddleOCR, Apache-2.0)
that the ``rapidocr-onnxruntime`` package ships as ``.onnx`` files; nothing is
downloaded. Building means: read them from the installed package, extract the
recogniser's character set (stored in the ONNX metadata), let ONNX Runtime
optimise both graphs once and save them, and write a manifest. The next run
finds the manifest and loads the saved graphs straight away; a different
package or ONNX Runtime version rebuilds.

python -m examples.camera_detection.build            # build (or reuse) and print where
python -m examples.camera_detection.build --force    # rebuild
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

__all__ = ["ModelFiles", "build_models", "default_cache_dir", "package_models"]

PACKAGE = "rapidocr_onnxruntime"
DET_FILE = "ch_PP-OCRv4_det_infer.onnx"
REC_FILE = "ch_PP-OCRv4_rec_infer.onnx"


@dataclass(frozen=True)
class ModelFiles:
    """Where the prepared models are.

    Attributes:
        detector: The DB text detector (optimised graph).
        recognizer: The SVTR-LCNet CTC recogniser (optimised graph).
        charset: The recogniser's characters, one per line, in class order
            (class 0 is the CTC blank and is not listed).
        manifest: What the files were built from.
    """

    detector: Path
    recognizer: Path
    charset: Path
    manifest: dict[str, str]


def default_cache_dir() -> Path:
    """``$STREAMML_CACHE/camera_detection``, else ``~/.cache/streamml/camera_detection``.

    Examples:
        >>> default_cache_dir().name
        'camera_detection'
    """
    root = os.environ.get("STREAMML_CACHE")
    base = Path(root) if root else Path.home() / ".cache" / "streamml"
    return base / "camera_detection"


def package_models() -> tuple[Path, Path]:
    """The detector and recogniser ``.onnx`` files inside the installed wheel.

    The package is located without importing it (importing it would load
    OpenCV, which this example does not use).

    Raises:
        RuntimeError: the package is not installed, saying how to install it.

    Examples:
        >>> [p.name for p in package_models()]
        ['ch_PP-OCRv4_det_infer.onnx', 'ch_PP-OCRv4_rec_infer.onnx']
    """
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the camera example needs the PP-OCRv4 models of rapidocr-onnxruntime; "
            "install them with: pip install 'rapidocr-onnxruntime==1.4.4'"
        )
    models = Path(next(iter(spec.submodule_search_locations))) / "models"
    det, rec = models / DET_FILE, models / REC_FILE
    for path in (det, rec):
        if not path.is_file():
            raise RuntimeError(f"{path} is missing; reinstall rapidocr-onnxruntime")
    return det, rec


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _optimise(source: Path, target: Path) -> None:
    opts = ort.SessionOptions()
    # "extended" fusions are portable across CPUs of one ORT version; "all" adds
    # layout changes tied to this machine's instruction set.
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.optimized_model_filepath = str(target)
    ort.InferenceSession(str(source), opts, providers=["CPUExecutionProvider"])


def build_models(cache_dir: Path | None = None, *, force: bool = False) -> ModelFiles:
    """Prepare the models in ``cache_dir`` (default :func:`default_cache_dir`), or reuse them.

    Returns:
        :class:`ModelFiles`.

    Examples:
        >>> files = build_models()
        >>> files.detector.name, files.manifest["package"]
        ('ppocrv4_det.onnx', 'rapidocr_onnxruntime 1.4.4')
    """
    cache = cache_dir or default_cache_dir()
    det_src, rec_src = package_models()
    wanted = {
        "package": f"{PACKAGE} {importlib.metadata.version(PACKAGE.replace('_', '-'))}",
        "onnxruntime": ort.__version__,
        "detector_sha256": _sha256(det_src),
        "recognizer_sha256": _sha256(rec_src),
    }
    files = ModelFiles(
        detector=cache / "ppocrv4_det.onnx",
        recognizer=cache / "ppocrv4_rec.onnx",
        charset=cache / "ppocrv4_rec_charset.txt",
        manifest=wanted,
    )
    manifest_path = cache / "manifest.json"
    if not force and manifest_path.is_file():
        try:
            built = json.loads(manifest_path.read_text())
        except ValueError:
            built = None
        paths = (files.detector, files.recognizer, files.charset)
        if built == wanted and all(p.is_file() for p in paths):
            return files
    cache.mkdir(parents=True, exist_ok=True)
    rec_session = ort.InferenceSession(str(rec_src), providers=["CPUExecutionProvider"])
    charset = rec_session.get_modelmeta().custom_metadata_map.get("character")
    if not charset:
        raise RuntimeError(f"{rec_src} has no 'character' metadata; is it a PP-OCR recogniser?")
    tmp = cache / f".building-{os.getpid()}"
    tmp.mkdir(exist_ok=True)
    _optimise(det_src, tmp / files.detector.name)
    _optimise(rec_src, tmp / files.recognizer.name)
    (tmp / files.charset.name).write_text(charset, encoding="utf-8")
    for path in (files.detector, files.recognizer, files.charset):
        os.replace(tmp / path.name, path)  # atomic: a parallel build never sees half a file
    tmp.rmdir()
    manifest_path.write_text(json.dumps(wanted, indent=2) + "\n")
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m examples.camera_detection.build",
        description="Prepare the PP-OCRv4 detector and recogniser shipped by rapidocr-onnxruntime.",
    )
    parser.add_argument("--cache", type=Path, default=None, help="cache folder")
    parser.add_argument("--force", action="store_true", help="rebuild even if cached")
    args = parser.parse_args(argv)
    files = build_models(args.cache, force=args.force)
    print(f"detector    {files.detector}")
    print(f"recogniser  {files.recognizer}")
    print(f"charset     {files.charset}")
    for key, value in files.manifest.items():
        print(f"  {key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
