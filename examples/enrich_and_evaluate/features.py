"""The fraud model's features, from a transaction enriched with its account row.

The same operator builds the training matrix (``model.py`` runs it over
generated, enriched transactions) and serves the dataflow, so training and
serving cannot drift apart.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import operator
from bytewax.operators import KeyedStream
from streamml.operators import featurize
from streamml.operators.featurize import Feature, FeatureSchema, FeaturesOut

from examples.enrich_and_evaluate.data import CATEGORIES
from streamml.errors import reject

__all__ = ["SCHEMA", "add_features"]

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


def _derive(step_id: str):
    """A batch function: derived fields of each enriched transaction, re-keyed by ``tx_id``.

    The new event keeps what identifies the transaction (``tx_id``,
    ``account_id``, ``ts``, ``amount``) and the features, not every field of
    the transaction and its account: each later step copies the event, so
    fewer fields make every step cheaper.

    A number out of range gives NaN (``assemble`` rejects it and says which);
    a missing or mistyped field rejects the event here.
    """

    def derive(items: list[tuple[str, Mapping[str, Any]]]) -> list[Any]:
        log1p, nan = math.log1p, math.nan
        out: list[Any] = []
        for item in items:
            e = item[1]
            try:
                amount, limit, distance = e["amount"], e["credit_limit"], e["distance_km"]
                out.append(
                    (
                        e["tx_id"],
                        {
                            "tx_id": e["tx_id"],
                            "account_id": e["account_id"],
                            "ts": e["ts"],
                            "amount": amount,
                            "merchant_category": e["merchant_category"],
                            "log_amount": log1p(amount) if amount >= 0 else nan,
                            "amount_to_limit": amount / limit if limit > 0 else nan,
                            "foreign": float(e["country"] != e["home_country"]),
                            "card_present": float(e["card_present"]),
                            "night": float(1 <= e["local_hour"] <= 4),
                            "log_distance": log1p(distance) if distance >= 0 else nan,
                            "log_account_age": log1p(max(e["account_age_days"], 0)),
                            "risk_tier": float(e["risk_tier"]),
                        },
                    )
                )
            except Exception as exc:  # noqa: BLE001 - bad data goes to errs
                out.append(reject(step_id, exc, item))
        return out

    return derive


def _is_keyed(item: object) -> bool:
    return type(item) is tuple  # a Rejected is a NamedTuple, so not exactly a tuple


@operator
def add_features(step_id: str, up: KeyedStream[Mapping[str, Any]]) -> FeaturesOut:
    """Enriched transactions ``(account_id, event)`` to ``(tx_id, features event)``.

    ``features`` is a float32 vector in :data:`SCHEMA` order. Events whose
    derived numbers are not finite (a negative amount, a zero credit limit)
    go to ``errs`` as ``InvalidFeature``, events missing a field (an account
    row without ``credit_limit``) with the exception's type.
    """
    derived = op.branch(
        "derived", op.flat_map_batch("derive", up, _derive(f"{step_id}.derive")), _is_keyed
    )
    hot = featurize.one_hot(
        "merchant_category", derived.trues, field="merchant_category", categories=CATEGORIES
    )
    vec = featurize.assemble("assemble", hot.oks, schema=SCHEMA)
    return FeaturesOut(oks=vec.oks, errs=op.merge("errs", derived.falses, hot.errs, vec.errs))
