"""The batch serde protocols, the failure marker, and the trivial serdes.

Two shapes of batch go through a serde: a list of values (``decode_batch``,
``encode_batch``: one Python value per payload) and a columnar
``polars.DataFrame`` (``decode_frame``, ``encode_frame``: one row per
payload), the unit that flows between streamml steps. Every serde has both:
the protocols below give ``decode_frame`` and ``encode_frame`` a default
built on the row methods, and serdes override them where a columnar path pays.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, Protocol, TypeVar, runtime_checkable

import numpy as np
import polars as pl

__all__ = [
    "BytesSerde",
    "Deserializer",
    "FrameDecoded",
    "SerdeError",
    "Serializer",
    "ServiceUnavailable",
    "StringSerde",
    "check_serde",
    "decode_frame",
    "encode_frame",
    "frame_from_values",
    "join_dtypes",
    "is_error",
    "map_each",
    "split_records",
]

T = TypeVar("T")
R = TypeVar("R")


class SerdeError(Exception):
    """Marks one payload that could not be decoded, or one value that could not be encoded.

    Serdes return it in place of the result instead of raising it.

    Attributes:
        kind: A short machine-readable kind (``"DecodeError"``,
            ``"UnknownSchema"``, ``"EncodeError"``, ...).
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.kind, str(self)))


class ServiceUnavailable(RuntimeError):
    """A service a serde depends on (a schema registry) did not answer within its timeout.

    Not bad data: no payload is to blame, so nothing is dead-lettered. The
    serde raises it, the dataflow stops with the reason, and Bytewax
    recovery resumes from the last snapshot once the service is back.
    """


def is_error(item: object) -> bool:
    """True when ``item`` is a :class:`SerdeError` marker.

    Examples:
        >>> is_error(SerdeError("DecodeError", "bad")), is_error({"a": 1})
        (True, False)
    """
    return type(item) is SerdeError


class FrameDecoded(NamedTuple):
    """What :meth:`Deserializer.decode_frame` returns: the rows that decoded, and why the rest did not.

    Every input index is in exactly one of ``rows`` and the error indices, so
    ``len(frame) + len(errors) == len(payloads)``.

    Attributes:
        frame: One row per payload that decoded, in input order.
        rows: int64 array: for each row of ``frame``, its index in the input list.
        errors: ``(input index, SerdeError)`` for each payload that did not
            decode, in input order.
    """

    frame: pl.DataFrame
    rows: np.ndarray
    errors: list[tuple[int, SerdeError]]


@runtime_checkable
class Deserializer(Protocol):
    """Turns a batch of payloads into values (a :class:`SerdeError` for each failure).

    ``decode_batch`` is the one method a deserializer must write;
    ``decode_frame`` has a default built on it (inherit it by subclassing
    ``Deserializer``, or call :func:`decode_frame` on any object with
    ``decode_batch``).
    """

    def decode_batch(self, payloads: Sequence[bytes | None]) -> list[Any]: ...

    def decode_frame(self, payloads: list[bytes | None]) -> FrameDecoded:
        """Decode a batch into a DataFrame with one row per payload that decoded.

        The default decodes with ``decode_batch`` and builds the frame with
        :func:`frame_from_values`: each decoded dict is a row, missing keys
        are null, a ``None`` (tombstone) or a value that is not a dict is an
        error. Nothing is raised.
        """
        return frame_from_values(self.decode_batch(payloads))


@runtime_checkable
class Serializer(Protocol):
    """Turns a batch of values into payloads (a :class:`SerdeError` for each failure).

    ``encode_batch`` is the one method a serializer must write;
    ``encode_frame`` has a default built on it (inherit it by subclassing
    ``Serializer``, or call :func:`encode_frame` on any object with
    ``encode_batch``).
    """

    def encode_batch(self, values: Sequence[Any]) -> list[bytes | None | SerdeError]: ...

    def encode_frame(self, frame: pl.DataFrame) -> list[bytes | SerdeError]:
        """Encode each row of ``frame`` (in order) to one payload, or a SerdeError saying why not.

        The default encodes ``frame.to_dicts()`` with ``encode_batch``.
        """
        return _encode_rows(self, frame)


def check_serde(name: str, serde: Any, method: str) -> None:
    """Refuse, when a dataflow is built, what cannot be a serde: a class, or no ``method``.

    ``value_serde=JsonSerde`` (the class, not an instance) would otherwise
    pass the build and turn every message into a dead letter.

    Examples:
        >>> check_serde("value_serde", StringSerde(), "decode_batch")
        >>> check_serde("value_serde", StringSerde, "decode_batch")
        Traceback (most recent call last):
        ...
        TypeError: value_serde must be a serde instance, not the class StringSerde: pass StringSerde()
        >>> check_serde("key_serde", "utf-8", "encode_batch")
        Traceback (most recent call last):
        ...
        TypeError: key_serde must be a serde with encode_batch(), e.g. StringSerde() or JsonSerde(); got 'utf-8'
    """
    if isinstance(serde, type):
        raise TypeError(
            f"{name} must be a serde instance, not the class {serde.__name__}: "
            f"pass {serde.__name__}()"
        )
    if not callable(getattr(serde, method, None)):
        raise TypeError(
            f"{name} must be a serde with {method}(), e.g. StringSerde() or JsonSerde(); "
            f"got {serde!r}"
        )


def decode_frame(deserializer: Any, payloads: list[bytes | None]) -> FrameDecoded:
    """``deserializer.decode_frame(payloads)``, or the default for one that only has ``decode_batch``.

    Examples:
        >>> class Upper:  # a user's own deserializer, with only decode_batch
        ...     def decode_batch(self, payloads):
        ...         return [{"word": p.decode().upper()} for p in payloads]
        >>> decode_frame(Upper(), [b"a", b"b"]).frame["word"].to_list()
        ['A', 'B']
    """
    method = getattr(deserializer, "decode_frame", None)
    if method is not None:
        return method(payloads)
    return frame_from_values(deserializer.decode_batch(payloads))


def encode_frame(serializer: Any, frame: pl.DataFrame) -> list[bytes | SerdeError]:
    """``serializer.encode_frame(frame)``, or the default for one that only has ``encode_batch``.

    Examples:
        >>> class Words:  # a user's own serializer, with only encode_batch
        ...     def encode_batch(self, values):
        ...         return [v["word"].encode() for v in values]
        >>> encode_frame(Words(), pl.DataFrame({"word": ["a", "b"]}))
        [b'a', b'b']
    """
    method = getattr(serializer, "encode_frame", None)
    if method is not None:
        return method(frame)
    return _encode_rows(serializer, frame)


def _encode_rows(serializer: Any, frame: pl.DataFrame) -> list[bytes | SerdeError]:
    if frame.width == 0:
        return serializer.encode_batch([{}] * frame.height)
    return serializer.encode_batch(frame.to_dicts())


# What a polars call may raise: its exceptions, and a Rust panic (a BaseException).
POLARS_ERRORS: tuple[type[BaseException], ...] = (Exception, pl.exceptions.PanicException)
# A temporary column with each row's input index, so frames of no columns keep their rows.
_ROW = "\x00streamml_row"
_BIG_INTS = frozenset({pl.Int128, pl.UInt64, pl.UInt128})
_EMPTY_ROWS = np.empty(0, np.int64)
_DICT = frozenset({dict})


def frame_from_values(
    values: Sequence[Any], schema: Mapping[str, Any] | None = None
) -> FrameDecoded:
    """Build a :class:`FrameDecoded` from the values a ``decode_batch`` returned.

    Each ``dict`` is a row (missing keys are null). A :class:`SerdeError`
    stays an error; ``None`` (a tombstone) becomes a ``"Tombstone"`` error
    and any other value a ``"NotARecord"`` error, since neither has columns.

    Column types are ``schema`` when given (its columns only, in its order),
    or inferred by polars from the whole batch; without a schema, an integer
    column that does not fit int64 becomes Float64 (see :func:`widen_big_ints`).
    Rows whose types cannot join the rows before them (a number where earlier
    rows had an object, say) become ``"SchemaMismatch"`` errors.

    Examples:
        >>> out = frame_from_values([{"a": 1}, None, {"a": 2, "b": "x"}, [3]])
        >>> out.frame.rows(), out.rows.tolist()
        ([(1, None), (2, 'x')], [0, 2])
        >>> out.errors
        [(1, SerdeError('a null payload (tombstone) has no row')), (3, SerdeError('a list is not a record'))]
    """
    if set(map(type, values)) <= _DICT:
        return frame_from_dicts(values, range(len(values)), [], schema)
    return frame_from_dicts(*split_records(values), schema)


def split_records(
    values: Sequence[Any],
) -> tuple[list[dict[str, Any]], list[int], list[tuple[int, SerdeError]]]:
    """The dicts among decoded values, their input indices, and an error for each other value.

    Examples:
        >>> split_records([{"a": 1}, None, 3])
        ([{'a': 1}], [0], [(1, SerdeError('a null payload (tombstone) has no row')), (2, SerdeError('a int is not a record'))])
    """
    dicts: list[dict[str, Any]] = []
    rows: list[int] = []
    errors: list[tuple[int, SerdeError]] = []
    for i, value in enumerate(values):
        if type(value) is dict:
            dicts.append(value)
            rows.append(i)
        elif type(value) is SerdeError:
            errors.append((i, value))
        elif value is None:
            errors.append((i, SerdeError("Tombstone", "a null payload (tombstone) has no row")))
        else:
            errors.append(
                (i, SerdeError("NotARecord", f"a {type(value).__name__} is not a record"))
            )
    return dicts, rows, errors


def frame_from_dicts(
    dicts: Sequence[dict[str, Any]],
    rows: Sequence[int],
    errors: list[tuple[int, SerdeError]],
    schema: Mapping[str, Any] | None = None,
) -> FrameDecoded:
    """The frame of ``dicts`` (the records of input indices ``rows``), with ``errors`` merged in.

    See :func:`frame_from_values` for the typing rules.
    """

    def build(positions: Sequence[int]) -> pl.DataFrame:
        picked = dicts if len(positions) == len(dicts) else [dicts[p] for p in positions]
        if schema is not None:
            return pl.from_dicts(picked, schema=schema)
        if not picked[0] and not any(picked):  # only empty records: no columns, but rows
            return pl.DataFrame(height=len(picked))
        return widen_big_ints(pl.from_dicts(picked, infer_schema_length=None))

    return frames_in_order(build, rows, errors, schema)


def widen_big_ints(frame: pl.DataFrame) -> pl.DataFrame:
    """Make every column of integers beyond int64 (UInt64, Int128, UInt128) Float64.

    JSON numbers past int64 arrive as such columns; most of the stack below
    (NumPy features, ONNX models) has no 128-bit integers, and a double is
    what JavaScript and orjson (past 2**64) read them as. Give a schema to
    keep them exact.

    Examples:
        >>> widen_big_ints(pl.DataFrame({"n": [2**64]})).schema
        Schema([('n', Float64)])
    """
    if _BIG_INTS.isdisjoint(frame.schema.dtypes()):
        return frame
    return frame.with_columns(
        pl.col(name).cast(pl.Float64) for name, dtype in frame.schema.items() if dtype in _BIG_INTS
    )


def empty_frame(schema: Mapping[str, Any] | None) -> pl.DataFrame:
    """A frame of no rows: with ``schema``'s columns when given."""
    return pl.DataFrame(schema=dict(schema)) if schema is not None else pl.DataFrame()


def frames_in_order(
    build: Callable[[Sequence[int]], pl.DataFrame],
    rows: Sequence[int],
    errors: list[tuple[int, SerdeError]],
    schema: Mapping[str, Any] | None = None,
    kind: str = "SchemaMismatch",
) -> FrameDecoded:
    """One frame of the candidate ``rows``, dropping as errors the rows that cannot join it.

    ``build(positions)`` makes the frame of the candidates at those positions
    of ``rows`` (or raises). The whole list is tried first; when it fails, it
    is split in halves, recursively, so a batch with k bad rows costs about
    k·log2(n) builds. A row is accepted when it builds alone and its column
    types can join those of the rows accepted before it (:func:`join_dtypes`:
    int and float make float; text joins only text); otherwise it
    becomes a ``kind`` error. ``errors`` (already found, by input index) are
    merged with the new ones in input order.
    """
    rows = list(rows)
    if not rows:
        return FrameDecoded(empty_frame(schema), _EMPTY_ROWS, sorted(errors, key=_first))
    try:
        frame = build(range(len(rows)))
        if frame.height == len(rows):
            return FrameDecoded(frame, np.asarray(rows, np.int64), sorted(errors, key=_first))
    except POLARS_ERRORS:
        pass
    frames: list[pl.DataFrame] = []
    found: list[tuple[int, SerdeError]] = []
    accepted: dict[str, Any] = {}  # the column types of the rows accepted so far

    def accept(frame: pl.DataFrame, positions: Sequence[int]) -> bool:
        if frame.height != len(positions):
            return False
        joined = dict(accepted)
        for name, dtype in frame.schema.items():
            known = joined.get(name)
            if known is not None:
                dtype = join_dtypes(known, dtype)
                if dtype is None:
                    return False
            joined[name] = dtype
        accepted.update(joined)
        frames.append(frame.with_columns(pl.Series(_ROW, [rows[p] for p in positions], pl.Int64)))
        return True

    def solve(positions: Sequence[int], tried: bool = False) -> None:
        reason = "its column types do not fit the rows before it in the batch"
        if not tried:
            try:
                if accept(build(positions), positions):
                    return
            except POLARS_ERRORS as exc:
                reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        if len(positions) == 1:
            found.append((rows[positions[0]], SerdeError(kind, reason)))
            return
        middle = len(positions) // 2
        solve(positions[:middle])
        solve(positions[middle:])

    solve(range(len(rows)), tried=len(rows) > 1)  # a lone row is built again for its reason
    frame = _concat_in_order(frames, found, kind)
    if frame is None:
        return FrameDecoded(empty_frame(schema), _EMPTY_ROWS, sorted(errors + found, key=_first))
    order = frame[_ROW].to_numpy().astype(np.int64, copy=False)
    return FrameDecoded(frame.drop(_ROW), order, sorted(errors + found, key=_first))


def join_dtypes(a: Any, b: Any) -> Any:
    """The column type that holds values of types ``a`` and ``b`` unchanged, or None if none does.

    The NDJSON reader's own rules, made explicit (polars' relaxed concat is
    looser: it would put an integer in a struct): equal types; null with
    anything; integers with floats make Float64, integers with integers
    Int64; lists and structs join field by field. Text joins only text: the
    reader would hold a number among strings as its text (``0.0`` as
    ``"0.0"``), which changes the value, so such a row does not fit.

    Examples:
        >>> join_dtypes(pl.Int64, pl.Float64), join_dtypes(pl.Int64, pl.String)
        (Float64, None)
        >>> join_dtypes(pl.Int64, pl.Struct({"b": pl.Int64})) is None
        True
    """
    if a == b:
        return a
    if a == pl.Null or b == pl.Null:
        return b if a == pl.Null else a
    if a.is_numeric() and b.is_numeric():
        return pl.Float64 if a.is_float() or b.is_float() else pl.Int64
    if isinstance(a, pl.List) and isinstance(b, pl.List):
        inner = join_dtypes(a.inner, b.inner)
        return pl.List(inner) if inner is not None else None
    if isinstance(a, pl.Struct) and isinstance(b, pl.Struct):
        fields = {f.name: f.dtype for f in a.fields}
        for field in b.fields:
            known = fields.get(field.name)
            dtype = field.dtype if known is None else join_dtypes(known, field.dtype)
            if dtype is None:
                return None
            fields[field.name] = dtype
        return pl.Struct(fields)
    return None


def _concat_in_order(
    frames: list[pl.DataFrame], found: list[tuple[int, SerdeError]], kind: str
) -> pl.DataFrame | None:
    """The accepted frames joined; a frame that still cannot join (rare) becomes errors."""
    if not frames:
        return None
    try:
        return pl.concat(frames, how="diagonal_relaxed") if len(frames) > 1 else frames[0]
    except POLARS_ERRORS:
        pass
    joined = frames[0]
    for frame in frames[1:]:
        try:
            joined = pl.concat([joined, frame], how="diagonal_relaxed")
        except POLARS_ERRORS as exc:
            message = f"its column types do not fit the rows before it ({type(exc).__name__})"
            found.extend((int(i), SerdeError(kind, message)) for i in frame[_ROW].to_list())
    return joined


def _first(item: tuple[int, Any]) -> int:
    return item[0]


def map_each(
    fn: Callable[[T], R], items: Sequence[T], kind: str, describe: Callable[[Exception], str] = str
) -> list[R | SerdeError]:
    """Apply ``fn`` to every item, turning each exception into a :class:`SerdeError`.

    The whole batch is first tried in one ``map`` (the fast path, with no
    per-item ``try`` and, for a function written in C, no Python bytecode per
    item); only a batch with a failure is redone item by item. A
    :class:`ServiceUnavailable` is not the item's fault: it is raised.

    Examples:
        >>> map_each(int, ["1", "x", "3"], "DecodeError")
        [1, SerdeError("invalid literal for int() with base 10: 'x'"), 3]
    """
    try:
        return list(map(fn, items))
    except ServiceUnavailable:
        raise
    except Exception:  # noqa: BLE001 - fall back to item-by-item to find the culprits
        pass
    out: list[R | SerdeError] = []
    for item in items:
        try:
            out.append(fn(item))
        except ServiceUnavailable:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure becomes a marker
            out.append(SerdeError(kind, describe(exc)))
    return out


def _none_safe(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def wrapped(item: Any) -> Any:
        return None if item is None else fn(item)

    return wrapped


class BytesSerde(Deserializer, Serializer):
    """Pass bytes through unchanged (``None`` stays ``None``).

    As a frame, the payloads are one Binary column named ``value``, where
    ``None`` is null; encoding takes the ``value`` column (or a frame's only
    column) and gives back its bytes, a null as ``None`` (a tombstone).

    Examples:
        >>> BytesSerde().decode_batch([b"a", None])
        [b'a', None]
        >>> BytesSerde().encode_batch([b"a", "no"])
        [b'a', SerdeError('expected bytes, got str')]
        >>> decoded = BytesSerde().decode_frame([b"a", None])
        >>> decoded.frame.schema, decoded.errors
        (Schema([('value', Binary)]), [])
        >>> BytesSerde().encode_frame(decoded.frame)
        [b'a', None]
    """

    def decode_batch(self, payloads: Sequence[bytes | None]) -> list[Any]:
        return list(payloads)

    def encode_batch(self, values: Sequence[Any]) -> list[bytes | None | SerdeError]:
        return [
            v
            if v is None or isinstance(v, bytes)
            else SerdeError("EncodeError", f"expected bytes, got {type(v).__name__}")
            for v in values
        ]

    def decode_frame(self, payloads: list[bytes | None]) -> FrameDecoded:
        if set(map(type, payloads)) <= _BYTES_OR_NONE:
            return _value_frame(pl.Series("value", payloads, pl.Binary))
        return _value_frame_of(self.decode_batch(payloads), pl.Binary)  # not bytes: errors

    def encode_frame(self, frame: pl.DataFrame) -> list[bytes | SerdeError]:
        column = _value_column(frame)
        if isinstance(column, SerdeError):
            return [column] * frame.height
        if column.dtype == pl.Binary:
            return column.to_list()
        return self.encode_batch(column.to_list())  # type: ignore[return-value]


class StringSerde(Deserializer, Serializer):
    """UTF-8 text (``None`` stays ``None``); typical for Kafka keys.

    As a frame, the text is one String column named ``value``, where ``None``
    is null; encoding takes the ``value`` column (or a frame's only column),
    as text, and gives back its UTF-8 bytes, a null as ``None`` (a tombstone).

    Examples:
        >>> StringSerde().decode_batch([b"pump-1", b"\\xff", None])
        ['pump-1', SerdeError("'utf-8' codec can't decode byte 0xff in position 0: invalid start byte"), None]
        >>> decoded = StringSerde().decode_frame([b"pump-1", b"\\xff", None])
        >>> decoded.frame["value"].to_list(), decoded.rows.tolist(), decoded.errors
        (['pump-1', None], [0, 2], [(1, SerdeError("'utf-8' codec can't decode byte 0xff ...))])
        >>> StringSerde().encode_frame(pl.DataFrame({"value": ["pump-1", None]}))
        [b'pump-1', None]
    """

    def decode_batch(self, payloads: Sequence[bytes | None]) -> list[Any]:
        if set(map(type, payloads)) <= _BYTES:  # no None: decode in C, no wrapper per item
            return map_each(bytes.decode, payloads, "DecodeError")
        return map_each(_none_safe(bytes.decode), payloads, "DecodeError")

    def encode_batch(self, values: Sequence[Any]) -> list[bytes | None | SerdeError]:
        if set(map(type, values)) <= _STR:  # str(v) is v: encode in C, no wrapper per item
            return map_each(str.encode, values, "EncodeError")
        return map_each(_none_safe(_str_encode), values, "EncodeError")

    def decode_frame(self, payloads: list[bytes | None]) -> FrameDecoded:
        if set(map(type, payloads)) <= _BYTES_OR_NONE:
            try:  # UTF-8 checked and decoded in Rust; any invalid payload fails the whole cast
                return _value_frame(pl.Series("value", payloads, pl.Binary).cast(pl.String))
            except POLARS_ERRORS:
                pass
        return _value_frame_of(self.decode_batch(payloads), pl.String)

    def encode_frame(self, frame: pl.DataFrame) -> list[bytes | SerdeError]:
        column = _value_column(frame)
        if isinstance(column, SerdeError):
            return [column] * frame.height
        try:
            return column.cast(pl.String).cast(pl.Binary).to_list()
        except POLARS_ERRORS:
            return self.encode_batch(column.to_list())  # type: ignore[return-value]


def _value_frame(column: pl.Series) -> FrameDecoded:
    return FrameDecoded(column.to_frame(), np.arange(len(column), dtype=np.int64), [])


def _value_frame_of(values: list[Any], dtype: Any) -> FrameDecoded:
    """The ``value`` frame of decoded values, each SerdeError taken out as an error."""
    errors = [(i, v) for i, v in enumerate(values) if type(v) is SerdeError]
    if not errors:
        return _value_frame(pl.Series("value", values, dtype))
    bad = {i for i, _ in errors}
    rows = [i for i in range(len(values)) if i not in bad]
    column = pl.Series("value", [values[i] for i in rows], dtype)
    return FrameDecoded(column.to_frame(), np.asarray(rows, np.int64), errors)


def _value_column(frame: pl.DataFrame) -> pl.Series | SerdeError:
    if "value" in frame.columns:
        return frame.get_column("value")
    if frame.width == 1:
        return frame.to_series()
    return SerdeError(
        "EncodeError", f"expected a 'value' column (or one column); got columns {frame.columns}"
    )


def _str_encode(value: Any) -> bytes:
    return str(value).encode()


_BYTES = frozenset({bytes})
_BYTES_OR_NONE = frozenset({bytes, type(None)})
_STR = frozenset({str})
