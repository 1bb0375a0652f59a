"""The fraud model's features, from frames of transactions enriched with their account rows.

The same operator builds the training matrix (``model.py`` runs it over
generated, enriched transactions) and serves the dataflow, so training and
serving cannot drift apart.

Three steps, each on whole frames: ``derive`` (the derived numbers as
polars expressions), :func:`streamml.operators.featurize.one_hot` (the
merchant category) and :func:`streamml.operators.featurize.assemble` (the
float32 vector in :data:`SCHEMA` order). No Python runs per transaction.
"""

from __future__ import annotations

import bytewax.operators as op
import polars as pl
from bytewax.dataflow import Stream, operator
from streamml.operators import featurize
from streamml.operators.featurize import Feature, FeatureSchema, FeaturesOut

from examples.enrich_and_evaluate.data import CATEGORIES
from streamml.errors import Rejected, reject

__all__ = ["SCHEMA", "add_features", "derive"]

_DERIVED = [
    "log_amount",
    "amount_to_limit",
    "foreign",
    "card_present",
    "night",
    "log_distance",
    "log_account_age",
    "risk_tier",
]
SCHEMA = FeatureSchema(
    [Feature(name, default=None) for name in _DERIVED]
    + [Feature(f"merchant_category_{c}") for c in CATEGORIES]
    + [Feature("merchant_category_other")]
)
"""The model's input vector: derived numbers, then the one-hot merchant category."""

_KEPT = ["tx_id", "account_id", "ts", "amount", "merchant_category"]
"""What identifies a transaction on its way to the model and the label join."""
_READ = [
    *_KEPT,
    "credit_limit",
    "distance_km",
    "country",
    "home_country",
    "card_present",
    "local_hour",
    "account_age_days",
    "risk_tier",
]
_NAN = float("nan")


def _expressions() -> list[pl.Expr]:
    amount, limit, distance = pl.col("amount"), pl.col("credit_limit"), pl.col("distance_km")
    return [
        *_KEPT,
        pl.when(amount < 0).then(_NAN).otherwise(amount.log1p()).alias("log_amount"),
        pl.when(limit <= 0).then(_NAN).otherwise(amount / limit).alias("amount_to_limit"),
        (pl.col("country") != pl.col("home_country")).cast(pl.Float64).alias("foreign"),
        pl.col("card_present").cast(pl.Float64),
        pl.col("local_hour").is_between(1, 4).cast(pl.Float64).alias("night"),
        pl.when(distance < 0).then(_NAN).otherwise(distance.log1p()).alias("log_distance"),
        pl.col("account_age_days").clip(lower_bound=0).log1p().alias("log_account_age"),
        pl.col("risk_tier").cast(pl.Float64),
    ]


def derive(frame: pl.DataFrame) -> pl.DataFrame:
    """The derived numbers of enriched transactions, beside what identifies them.

    A number out of range gives NaN (``assemble`` then rejects the row as
    ``InvalidFeature``); a null (an account row without ``credit_limit``)
    stays null (``assemble``: missing). Only the identifying columns and the
    features go on: each later step handles fewer columns.

    Examples:
        >>> tx = {"tx_id": "t1", "account_id": "a1", "ts": 0, "amount": 9.0,
        ...       "merchant_category": "fuel", "credit_limit": 100.0, "distance_km": 2.0,
        ...       "country": "NO", "home_country": "NO", "card_present": True,
        ...       "local_hour": 3, "account_age_days": 400, "risk_tier": 1}
        >>> [round(x, 2) for x in derive(pl.DataFrame([tx])).row(0)[5:]]
        [2.3, 0.09, 0.0, 1.0, 1.0, 1.1, 5.99, 1.0]
    """
    return frame.select(_expressions())


def _derive(step_id: str):
    """A batch function: frames to derived frames, and rejections for frames that cannot be read."""

    def run(frames: list[pl.DataFrame]) -> list[pl.DataFrame | Rejected]:
        out: list[pl.DataFrame | Rejected] = []
        for frame in frames:
            missing = [name for name in _READ if name not in frame.columns]
            if missing:  # no row of the frame has it (e.g. no account row has the field)
                why = f"field {missing[0]!r} is missing"
                out.extend(Rejected(step_id, "MissingField", why, r) for r in frame.to_dicts())
                continue
            try:
                out.append(derive(frame))
            except Exception as exc:  # noqa: BLE001 - a column of another type: bad data
                out.extend(reject(step_id, exc, r) for r in frame.to_dicts())
        return out

    return run


def _is_frame(item: object) -> bool:
    return isinstance(item, pl.DataFrame)


@operator
def add_features(step_id: str, up: Stream[pl.DataFrame]) -> FeaturesOut:
    """Frames of enriched transactions to frames with a ``features`` vector column.

    ``features`` is ``Array(Float32, 16)`` in :data:`SCHEMA` order; the
    frame keeps ``tx_id``, ``account_id``, ``ts``, ``amount`` and
    ``merchant_category`` beside it (and the one-hot columns). Rows whose
    derived numbers are not finite (a negative amount, a zero credit limit)
    or missing (an account row without ``credit_limit``) go to ``errs`` as
    ``InvalidFeature``, a frame without a field every row needs as
    ``MissingField``.

    Examples:
        >>> from bytewax.testing import TestingSource, TestingSink, run_main
        >>> from bytewax.dataflow import Dataflow
        >>> tx = {"tx_id": "t1", "account_id": "a1", "ts": 0, "amount": 9.0,
        ...       "merchant_category": "fuel", "credit_limit": 100.0, "distance_km": 2.0,
        ...       "country": "NO", "home_country": "NO", "card_present": True,
        ...       "local_hour": 3, "account_age_days": 400, "risk_tier": 1}
        >>> flow = Dataflow("features_doc")
        >>> frame = pl.DataFrame([tx, {**tx, "tx_id": "t2", "credit_limit": 0.0}])
        >>> out = add_features("f", op.input("in", flow, TestingSource([frame])))
        >>> oks, errs = [], []
        >>> op.output("oks", out.oks, TestingSink(oks))
        >>> op.output("errs", out.errs, TestingSink(errs))
        >>> run_main(flow)
        >>> [(r["tx_id"], [round(x, 2) for x in r["features"][:5]]) for r in oks[0].to_dicts()]
        [('t1', [2.3, 0.09, 0.0, 1.0, 1.0])]
        >>> [(r.error_type, r.reason, r.original["tx_id"]) for r in errs]
        [('InvalidFeature', 'amount_to_limit is not finite', 't2')]
    """
    mixed = op.flat_map_batch("derive", up, _derive(f"{step_id}.derive"))
    split = op.branch("derived", mixed, _is_frame)
    hot = featurize.one_hot(
        "merchant_category", split.trues, field="merchant_category", categories=CATEGORIES
    )
    vec = featurize.assemble("assemble", hot.oks, schema=SCHEMA)
    return FeaturesOut(oks=vec.oks, errs=op.merge("errs", split.falses, hot.errs, vec.errs))
