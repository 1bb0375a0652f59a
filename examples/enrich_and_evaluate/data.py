"""Generated accounts, card transactions and their delayed fraud labels, with the ground truth.

Whether a transaction is fraud depends on the transaction *and* its account
(a foreign card-not-present purchase is riskier on a young, high-risk
account; a large share of the credit limit is suspicious), so a model needs
the enrichment to score well, and the interactions leave room for a
non-linear model to beat a linear one.

Labels (chargebacks, analyst verdicts) come later: a few minutes to an hour
after the transaction, and for some transactions never.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np

__all__ = [
    "CATEGORIES",
    "COUNTRIES",
    "Dataset",
    "LABEL_DELAY_MEAN",
    "SPAN",
    "START",
    "fraud_probability",
    "generate",
]

COUNTRIES = ["US", "GB", "DE", "FR", "BR", "IN"]
CATEGORIES = ["grocery", "fuel", "restaurants", "travel", "electronics", "gaming", "misc"]
SPAN = timedelta(hours=2)
"""Event time covered by the transactions, whatever their number."""
LABEL_DELAY_MEAN = timedelta(minutes=8)
START = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)
"""Event time of the first transaction."""


@dataclass(frozen=True)
class Dataset:
    """What the example produces, and the truth to check the pipeline against.

    Attributes:
        accounts: The account table's changelog ``(account_id, row or None)``;
            ``None`` is a tombstone (a closed account).
        transactions: Transaction events in event-time order.
        labels: Label events ``{"tx_id", "is_fraud", "ts"}`` in arrival order
            (``ts`` in epoch milliseconds); some transactions have none.
        is_fraud: Ground truth of every transaction.
    """

    accounts: list[tuple[str, dict[str, Any] | None]]
    transactions: list[dict[str, Any]]
    labels: list[dict[str, Any]]
    is_fraud: dict[str, int]

    @property
    def live_accounts(self) -> set[str]:
        """Accounts with a row once the changelog is applied."""
        rows: dict[str, Any] = {}
        for key, row in self.accounts:
            rows[key] = row
        return {k for k, v in rows.items() if v is not None}


def fraud_probability(
    amount: np.ndarray,
    credit_limit: np.ndarray,
    foreign: np.ndarray,
    card_present: np.ndarray,
    risk_tier: np.ndarray,
    account_age_days: np.ndarray,
    local_hour: np.ndarray,
    risky_category: np.ndarray,
) -> np.ndarray:
    """P(fraud) of transactions, from transaction and account fields (the generator's truth)."""
    night = (local_hour >= 1) & (local_hour <= 4)
    z = (
        -7.0
        + 4.0 * (foreign & ~card_present)
        + 3.5 * (amount / credit_limit > 0.25)
        + 1.0 * risk_tier
        + 4.5 * (night & risky_category)
        + 3.0 * (account_age_days < 60) * (~card_present)
    )
    return 1.0 / (1.0 + np.exp(-z))


def _accounts(
    rng: np.random.Generator, n: int
) -> tuple[list[str], dict[str, np.ndarray], list[tuple[str, dict[str, Any] | None]]]:
    ids = [f"acct-{i:05d}" for i in range(n)]
    cols = {
        "home": rng.integers(0, len(COUNTRIES), n),
        "age": np.exp(rng.uniform(np.log(5), np.log(4000), n)).astype(int),
        "limit": np.round(np.exp(rng.normal(np.log(4000), 0.6, n)), -2).clip(500, 50_000),
        "tier": rng.choice(4, n, p=[0.55, 0.28, 0.12, 0.05]),
    }
    changelog: list[tuple[str, dict[str, Any] | None]] = []
    for i, key in enumerate(ids):
        changelog.append(
            (
                key,
                {
                    "home_country": COUNTRIES[cols["home"][i]],
                    "account_age_days": int(cols["age"][i]),
                    "credit_limit": float(cols["limit"][i]),
                    "risk_tier": int(cols["tier"][i]),
                },
            )
        )
    # A later version of some rows (limit raised): the table must keep the last one.
    for i in rng.choice(n, max(1, n // 50), replace=False).tolist():
        cols["limit"][i] = cols["limit"][i] * 2
        changelog.append((ids[i], {**changelog[i][1], "credit_limit": float(cols["limit"][i])}))
    return ids, cols, changelog


def generate(
    n_transactions: int,
    *,
    n_accounts: int = 2_000,
    closed_share: float = 0.005,
    unknown_share: float = 0.002,
    label_share: float = 0.92,
    seed: int = 7,
) -> Dataset:
    """Generate ``n_transactions`` over :data:`SPAN`, their accounts and their labels.

    ``closed_share`` of the accounts are closed (a tombstone in the table)
    and ``unknown_share`` of the transactions name an account the table
    never had: both must end as dead letters (no row to enrich with).
    ``label_share`` of the transactions get a label, after a delay of one
    minute plus an exponential with mean :data:`LABEL_DELAY_MEAN`.

    Examples:
        >>> d = generate(1000, n_accounts=100)
        >>> len(d.transactions), len(d.is_fraud), 0.8 < len(d.labels) / 1000 < 1.0
        (1000, 1000, True)
    """
    if n_transactions < 1:
        raise ValueError(f"n_transactions must be >= 1; got {n_transactions}")
    rng = np.random.default_rng(seed)
    ids, acc, changelog = _accounts(rng, n_accounts)
    closed = rng.choice(n_accounts, max(1, round(n_accounts * closed_share)), replace=False)
    changelog.extend((ids[i], None) for i in closed.tolist())

    n = n_transactions
    weights = rng.pareto(1.5, n_accounts) + 0.1
    who = rng.choice(n_accounts, n, p=weights / weights.sum())
    offsets_ms = np.sort(rng.uniform(0, SPAN.total_seconds() * 1000, n)).astype(np.int64)
    start_ms = int(START.timestamp() * 1000)
    card_present = rng.random(n) < 0.6
    foreign = rng.random(n) < np.where(card_present, 0.04, 0.15)
    home = acc["home"][who]
    country = np.where(foreign, (home + rng.integers(1, len(COUNTRIES), n)) % len(COUNTRIES), home)
    category = rng.choice(len(CATEGORIES), n, p=[0.3, 0.15, 0.2, 0.08, 0.1, 0.07, 0.1])
    risky = np.isin(category, [CATEGORIES.index("electronics"), CATEGORIES.index("gaming")])
    limit = acc["limit"][who]
    amount = np.round(np.exp(rng.normal(np.log(limit * 0.02), 1.1)), 2).clip(0.5, None)
    hour = rng.choice(24, n, p=_hour_weights())
    distance = np.where(
        foreign, rng.uniform(300, 9000, n), np.exp(rng.normal(np.log(8), 1.2, n))
    ).round(1)
    p = fraud_probability(
        amount, limit, foreign, card_present, acc["tier"][who], acc["age"][who], hour, risky
    )
    fraud = (rng.random(n) < p).astype(int)

    unknown = rng.random(n) < unknown_share
    transactions = []
    for i in range(n):
        account = f"acct-x{int(who[i]):05d}" if unknown[i] else ids[who[i]]
        transactions.append(
            {
                "tx_id": f"tx-{i:07d}",
                "account_id": account,
                "ts": datetime.fromtimestamp((start_ms + int(offsets_ms[i])) / 1000, timezone.utc),
                "amount": float(amount[i]),
                "merchant_category": CATEGORIES[category[i]],
                "country": COUNTRIES[country[i]],
                "card_present": bool(card_present[i]),
                "local_hour": int(hour[i]),
                "distance_km": float(distance[i]),
            }
        )

    labelled = np.flatnonzero(rng.random(n) < label_share)
    delays_ms = (
        60_000 + rng.exponential(LABEL_DELAY_MEAN.total_seconds() * 1000, len(labelled))
    ).astype(np.int64)
    label_ts = start_ms + offsets_ms[labelled] + delays_ms
    order = np.argsort(label_ts, kind="stable")
    labels = [
        {
            "tx_id": f"tx-{int(labelled[j]):07d}",
            "is_fraud": int(fraud[labelled[j]]),
            "ts": int(label_ts[j]),
        }
        for j in order.tolist()
    ]
    truth = {f"tx-{i:07d}": int(fraud[i]) for i in range(n)}
    return Dataset(changelog, transactions, labels, truth)


def _hour_weights() -> np.ndarray:
    w = np.array([2, 1, 1, 1, 1, 2, 4, 6, 8, 9, 9, 9, 10, 9, 9, 9, 9, 9, 10, 10, 9, 7, 5, 3.0])
    return w / w.sum()
