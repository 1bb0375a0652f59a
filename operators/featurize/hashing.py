"""Feature hashing: :func:`hash_features` (field values) and :func:`hash_text` (hashed text
vectors).

Frames are the unit: an item that is a ``polars.DataFrame`` is checked and
transformed on its columns (polars expressions and NumPy; no Python per
row), and comes out as the same rows with the new columns; a bad row
becomes a :class:`~streamml.errors.Rejected` (the row as a dict) and the
rest of its frame goes on (see :mod:`._frame_rows` for the checks).
``(key, event)`` rows, the legacy path, go through the same computation:
each batch's fields are read into columns, computed on, and written into
new dicts. Both units may share a stream.

Both are stateless and work on whole micro-batches with ``flat_map_batch``.
They match scikit-learn's ``FeatureHasher`` and ``HashingVectorizer`` (same
hash, same columns, same signs).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import polars as pl
from bytewax.dataflow import Stream, operator
from bytewax.operators import KeyedStream
from streamml.operators.featurize._frame_rows import dispatch, string_rows
from streamml.operators.featurize._murmur import murmurhash3_32_packed
from streamml.operators.featurize._transform import split_out
from streamml.operators.featurize.outputs import FeaturesOut

from streamml.errors import Rejected
from streamml.metrics import instrumented

__all__ = [
    "hash_features",
    "hash_text",
]


# -- hashing ----------------------------------------------------------------------


def _hash_tokens(
    tokens: pl.Series, rows: np.ndarray, n: int, features: int, signed: bool
) -> np.ndarray:
    """A float64 ``(n, features)`` matrix: each token (a ``String`` series) hashed into row
    ``rows[i]`` with scikit-learn's MurmurHash3 (bytes read packed: no Python object per token)."""
    matrix = np.zeros((n, features), dtype=np.float64)
    if len(tokens):
        lengths = tokens.str.len_bytes().to_numpy().astype(np.int64)
        joined = tokens.str.join("").item() if len(tokens) > 1 else tokens.item()
        flat = np.frombuffer(joined.encode("utf-8"), dtype=np.uint8)
        h = murmurhash3_32_packed(flat, lengths).astype(np.int64)
        cols = np.abs(h) % features
        vals = np.where(h < 0, -1.0, 1.0) if signed else np.ones(len(h))
        np.add.at(matrix, (rows, cols), vals)
    return matrix


def _field_tokens(columns: Sequence[pl.Series], fields: Sequence[str]) -> pl.Series:
    """``"{field}={value}"`` of every row and field, row after row."""
    frame = pl.DataFrame([col.cast(pl.String).alias(str(j)) for j, col in enumerate(columns)])
    tokens = frame.select(
        pl.concat_list(
            [pl.concat_str([pl.lit(f"{name}="), pl.col(str(j))]) for j, name in enumerate(fields)]
        )
    )
    return tokens.to_series().explode()


@operator
@instrumented
def hash_features(
    step_id: str,
    up: Stream[pl.DataFrame] | KeyedStream[Mapping[str, Any]],
    *,
    fields: Sequence[str],
    n_features: int = 1024,
    alternate_sign: bool = True,
    output: str = "hashed",
) -> FeaturesOut:
    """Hash high-cardinality string fields into a fixed-width float32 vector.

    Each field's value ``v`` becomes the token ``"{field}={v}"`` hashed into
    one of ``n_features`` columns (with a hash-derived sign when
    ``alternate_sign``) — the same as scikit-learn's
    ``FeatureHasher(n_features, input_type="dict")`` on ``{field: v}``. A
    missing field (in a frame, or null) is ``MissingField``; one that is
    not a ``str`` (a frame column that is not text) is ``NotAString``.

    Returns:
        ``oks`` with ``output`` set to a float32 array of ``n_features``
        (frames: a ``pl.Array(pl.Float32, n_features)`` column), and ``errs``.

    Examples:
        >>> import bytewax.operators as op
        >>> import polars as pl
        >>> from bytewax.dataflow import Dataflow
        >>> from bytewax.testing import TestingSource, TestingSink, run_main
        >>> frame = pl.DataFrame({"merchant": ["acme", None], "city": ["oslo", "rome"]})
        >>> flow = Dataflow("hash_frames_doc")
        >>> out = hash_features("h", op.input("in", flow, TestingSource([frame])),
        ...                     fields=["merchant", "city"], n_features=8)
        >>> oks, errs = [], []
        >>> op.output("oks", out.oks, TestingSink(oks))
        >>> op.output("errs", out.errs, TestingSink(errs))
        >>> run_main(flow)
        >>> oks[0]["hashed"].to_list(), [r.error_type for r in errs]
        ([[0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0]], ['MissingField'])

        ``(key, event)`` rows:

        >>> events = [("t", {"merchant": "acme", "city": "oslo"})]
        >>> flow = Dataflow("hash_doc")
        >>> out = hash_features("h", op.input("in", flow, TestingSource(events)),
        ...                     fields=["merchant", "city"], n_features=8)
        >>> oks = []
        >>> op.output("oks", out.oks, TestingSink(oks))
        >>> run_main(flow)
        >>> oks[0][1]["hashed"]
        array([0., 1., 0., 0., 0., 1., 0., 0.], dtype=float32)
    """
    if n_features < 1:
        raise ValueError(f"n_features must be >= 1; got {n_features}")
    if not fields or isinstance(fields, str):
        raise ValueError(f"fields must be a non-empty list of field names; got {fields!r}")
    fields = list(fields)

    def vectors(columns: Sequence[pl.Series], n: int) -> np.ndarray:
        tokens = _field_tokens(columns, fields)
        rows = np.repeat(np.arange(n), len(fields))
        return _hash_tokens(tokens, rows, n, n_features, alternate_sign).astype(np.float32)

    def on_frame(frame: pl.DataFrame) -> tuple[list, list]:
        good, errs = string_rows(frame, step_id, fields)
        if not good.height:
            return [], errs
        matrix = vectors([good.get_column(f) for f in fields], good.height)
        return [good.with_columns(pl.Series(output, matrix))], errs

    def on_rows(batch: list[Any]) -> tuple[list, list]:
        oks_items, columns, errs = [], [[] for _ in fields], []
        for item in batch:
            try:
                key, event = item
                values = [event[f] for f in fields]
            except (KeyError, TypeError, ValueError):
                errs.append(Rejected(step_id, "MissingField", f"one of {fields} is missing", item))
                continue
            if not all(isinstance(v, str) for v in values):
                bad = next(f for f, v in zip(fields, values) if not isinstance(v, str))
                reason = f"field {bad!r} must be a str to hash"
                errs.append(Rejected(step_id, "NotAString", reason, item))
                continue
            oks_items.append((key, event))
            for column, v in zip(columns, values):
                column.append(v)
        if not oks_items:
            return [], errs
        series = [pl.Series(column, dtype=pl.String) for column in columns]
        matrix = vectors(series, len(oks_items))
        return [(k, {**e, output: v}) for (k, e), v in zip(oks_items, matrix)], errs

    return split_out(up, dispatch(on_frame, on_rows))


_TOKEN = r"(?u)\b\w\w+\b"


class _Grams:
    """Texts to word n-grams: polars' Rust regex on whole columns where it matches Python's ``re``
    exactly (the default ``token_pattern`` on ASCII text), Python's ``re`` on the other texts."""

    def __init__(self, token_pattern: str, lowercase: bool, lo: int, hi: int) -> None:
        self.pattern = token_pattern
        self.findall = re.compile(token_pattern).findall
        self.lowercase, self.lo, self.hi = lowercase, lo, hi
        self.columnar = token_pattern == _TOKEN

    def _python(self, text: str) -> list[str]:
        words = self.findall(text.lower() if self.lowercase else text)
        if self.lo == self.hi == 1:
            return words
        found = []
        for n in range(self.lo, self.hi + 1):
            found.extend(" ".join(words[i : i + n]) for i in range(len(words) - n + 1))
        return found

    def __call__(self, texts: pl.Series) -> tuple[pl.Series, np.ndarray]:
        """Every n-gram of every text (a ``String`` series without nulls), and each one's row."""
        n = len(texts)
        if self.columnar:
            fast = texts.str.contains(r"^[\x00-\x7F]*$").to_numpy()
        else:
            fast = np.zeros(n, dtype=bool)
        tokens: list[pl.Series] = []
        rows: list[np.ndarray] = []
        at = np.flatnonzero(fast)
        if len(at):
            part = texts if len(at) == n else texts.gather(at)
            if self.lowercase:
                part = part.str.to_lowercase()
            lists = part.str.extract_all(self.pattern)
            lens = lists.list.len().fill_null(0).to_numpy().astype(np.int64)
            words = lists.explode().drop_nulls()
            word_rows = np.repeat(at, lens)
            for size in range(self.lo, self.hi + 1):
                if size == 1:
                    tokens.append(words)
                    rows.append(word_rows)
                    continue
                if len(words) < size:
                    continue
                span = len(words) - size + 1
                same = word_rows[size - 1 :] == word_rows[:span]  # rows are grouped in order
                grams = pl.DataFrame({"w": words}).select(
                    pl.concat_str([pl.col("w").shift(-j) for j in range(size)], separator=" ")
                )
                keep = np.flatnonzero(same)
                tokens.append(grams.to_series().slice(0, span).gather(keep))
                rows.append(word_rows[:span][keep])
        slow = np.flatnonzero(~fast)
        if len(slow):
            found = [self._python(t) for t in texts.gather(slow).to_list()]
            tokens.append(pl.Series([g for grams in found for g in grams], dtype=pl.String))
            rows.append(np.repeat(slow, [len(g) for g in found]).astype(np.int64))
        if not tokens:
            return pl.Series([], dtype=pl.String), np.zeros(0, dtype=np.int64)
        return pl.concat(tokens), np.concatenate(rows)


@operator
@instrumented
def hash_text(
    step_id: str,
    up: Stream[pl.DataFrame] | KeyedStream[Mapping[str, Any]],
    *,
    field: str,
    n_features: int = 1024,
    ngram_range: tuple[int, int] = (1, 1),
    lowercase: bool = True,
    token_pattern: str = _TOKEN,
    alternate_sign: bool = True,
    norm: str | None = "l2",
    output: str | None = None,
) -> FeaturesOut:
    """Turn a short text into a hashed bag of words (and n-grams): a float32 vector.

    For posts, reviews, log lines: lower-case, split into tokens with
    ``token_pattern``, form word n-grams, hash each into one of
    ``n_features`` columns with a signed count, then scale rows to unit
    ``norm`` (``"l2"``, ``"l1"`` or ``None``). Equal to scikit-learn's
    ``HashingVectorizer`` with the same arguments (its defaults are these,
    except ``n_features=2**20``). A missing field (in a frame, or null) is
    ``MissingField``, a non-``str`` one (a frame column that is not text)
    ``NotAString``; an empty text gives a zero vector.

    Speed: with the default ``token_pattern``, ASCII texts are split by
    polars on the whole column (its regex agrees with Python's there);
    other texts, and any other pattern, by Python's ``re``, a call per text.

    Returns:
        ``oks`` with ``output`` (default ``{field}_hashed``) set to a float32
        array of ``n_features`` (frames: a ``pl.Array(pl.Float32,
        n_features)`` column), and ``errs``.

    Examples:
        >>> import bytewax.operators as op
        >>> import polars as pl
        >>> from bytewax.dataflow import Dataflow
        >>> from bytewax.testing import TestingSource, TestingSink, run_main
        >>> frame = pl.DataFrame({"id": [1, 2], "text": ["Great great product", None]})
        >>> flow = Dataflow("text_frames_doc")
        >>> out = hash_text("bow", op.input("in", flow, TestingSource([frame])), field="text",
        ...                 n_features=8)
        >>> oks, errs = [], []
        >>> op.output("oks", out.oks, TestingSink(oks))
        >>> op.output("errs", out.errs, TestingSink(errs))
        >>> run_main(flow)
        >>> [round(v, 3) for v in oks[0]["text_hashed"][0]], [r.error_type for r in errs]
        ([0.0, 0.0, -0.447, 0.0, 0.894, 0.0, 0.0, 0.0], ['MissingField'])

        ``(key, event)`` rows:

        >>> posts = [("p1", {"text": "Great great product"}), ("p2", {"text": 42})]
        >>> flow = Dataflow("text_doc")
        >>> out = hash_text("bow", op.input("in", flow, TestingSource(posts)), field="text",
        ...                 n_features=8)
        >>> oks, errs = [], []
        >>> op.output("oks", out.oks, TestingSink(oks))
        >>> op.output("errs", out.errs, TestingSink(errs))
        >>> run_main(flow)
        >>> [round(v, 3) for v in oks[0][1]["text_hashed"].tolist()], [r.error_type for r in errs]
        ([0.0, 0.0, -0.447, 0.0, 0.894, 0.0, 0.0, 0.0], ['NotAString'])
    """
    lo, hi = ngram_range
    if not 1 <= lo <= hi:
        raise ValueError(f"ngram_range must be (min, max) with 1 <= min <= max; got {ngram_range}")
    if n_features < 1:
        raise ValueError(f"n_features must be >= 1; got {n_features}")
    if norm not in ("l2", "l1", None):
        raise ValueError(f"norm must be 'l2', 'l1' or None; got {norm!r}")
    grams = _Grams(token_pattern, lowercase, lo, hi)
    out_name = output or f"{field}_hashed"

    def vectors(texts: pl.Series) -> np.ndarray:
        tokens, rows = grams(texts)
        matrix = _hash_tokens(tokens, rows, len(texts), n_features, alternate_sign)
        if norm is not None:
            size = np.abs(matrix).sum(1) if norm == "l1" else np.sqrt((matrix * matrix).sum(1))
            matrix /= np.where(size > 0, size, 1.0)[:, None]
        return matrix.astype(np.float32)

    def on_frame(frame: pl.DataFrame) -> tuple[list, list]:
        good, errs = string_rows(frame, step_id, [field])
        if not good.height:
            return [], errs
        matrix = vectors(good.get_column(field).cast(pl.String))
        return [good.with_columns(pl.Series(out_name, matrix))], errs

    def on_rows(batch: list[Any]) -> tuple[list, list]:
        oks_items, texts, errs = [], [], []
        for item in batch:
            try:
                key, event = item
                text = event[field]
            except (KeyError, TypeError, ValueError):
                errs.append(Rejected(step_id, "MissingField", f"field {field!r} is missing", item))
                continue
            if not isinstance(text, str):
                reason = f"field {field!r} is {type(text).__name__}, not a str"
                errs.append(Rejected(step_id, "NotAString", reason, item))
                continue
            texts.append(text)
            oks_items.append((key, event))
        if not oks_items:
            return [], errs
        matrix = vectors(pl.Series(texts, dtype=pl.String))
        return [(k, {**e, out_name: v}) for (k, e), v in zip(oks_items, matrix)], errs

    return split_out(up, dispatch(on_frame, on_rows))
