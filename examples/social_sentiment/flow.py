"""The social-sentiment dataflow: Avro posts in, scored posts and per-hashtag windows out.

Run it on its own against a running broker (``streamml broker`` starts one)::

    python -m bytewax.run "examples.social_sentiment.flow:build_flow('127.0.0.1:9092')"

or end to end, with real labelled tweets and a summary, with
``python -m examples.social_sentiment``.

Steps: decode Avro (schema in the registry) -> check and featurize the text
(hashtags; WordPiece tokens padded to 64) -> all-MiniLM-L6-v2 + sentiment
head in ONNX Runtime, dynamically batched -> scored posts (JSON) -> per
hashtag, sliding event-time windows of sentiment -> hashtag topic (JSON).
Every rejected record, at any step, goes to the dead-letter topic.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import bytewax.operators as op
import numpy as np
from bytewax.dataflow import Dataflow
from bytewax.operators.windowing import SlidingWindower
from streamml.operators.featurize import window_agg
from streamml.operators.infer import infer

from examples.social_sentiment.data import LABELS, START
from examples.social_sentiment.model import build_model, load_tokenizer, tokenize
from streamml import kafka
from streamml.errors import Rejected
from streamml.kafka import Record
from streamml.models import Model, OnnxModel
from streamml.serde import ConfluentAvroSerde, JsonSerde

__all__ = [
    "SCHEMA",
    "Topics",
    "build_flow",
    "featurize_posts",
    "hashtags_of",
    "scored_post",
    "window_row",
]

SCHEMA = Path(__file__).with_name("post.avsc")
EARLIEST = datetime(2006, 3, 21, tzinfo=timezone.utc)  # the first tweet
MAX_CLOCK_SKEW = timedelta(days=1)
MAX_HASHTAGS = 16
_HASHTAG = re.compile(r"#(\w+)")


@dataclass(frozen=True)
class Topics:
    """Topic names of the sentiment pipeline."""

    posts: str = "social-posts"
    scored: str = "social-scored"
    hashtags: str = "social-hashtag-sentiment"
    dead_letters: str = "social-dead-letters"


def hashtags_of(text: str) -> list[str]:
    """The distinct hashtags of a post, lower-cased, in order of appearance (at most 16).

    Examples:
        >>> hashtags_of("Brady again?! #DeflateGate #NFL #deflategate")
        ['deflategate', 'nfl']
    """
    return list(dict.fromkeys(t.lower() for t in _HASHTAG.findall(text)))[:MAX_HASHTAGS]


def _problem(value: Any, now: datetime) -> str | None:
    """Why a decoded post cannot be scored, or None when it can."""
    if not isinstance(value, dict):
        return "value is not a record"
    text = value.get("text")
    if not isinstance(text, str) or not text.strip():
        return f"text is {text!r}: nothing to score"
    ts = value.get("ts")
    if not isinstance(ts, datetime) or not EARLIEST <= ts <= now + MAX_CLOCK_SKEW:
        return f"timestamp {ts!r} is outside {EARLIEST.date()} .. now + {MAX_CLOCK_SKEW}"
    return None


def featurize_posts(
    step_id: str, tokenizer: Any, *, by_length: bool = True
) -> Callable[[list[Record]], list[tuple[str, dict[str, Any]] | Rejected]]:
    """A batch function: check posts, find hashtags, tokenize all texts in one call.

    Each usable post becomes ``(user, event)`` with ``hashtags``,
    ``input_ids`` and ``attention_mask`` (int64 rows of 64); each unusable one
    a :class:`Rejected` (``InvalidPost``) holding its record.

    With ``by_length`` the usable posts of a batch come out shortest first,
    so the model's batches, cut from this order, hold posts of similar length
    and the graph's trim to the longest one removes most padding: on this
    encoder that is worth about 1.5x (see ``benchmarks/examples_social_sentiment.py``).
    The price is that a user's posts within one source batch may be scored
    out of order; nothing downstream depends on it (windows use event time).

    Examples:
        >>> from streamml.kafka import Record
        >>> ts = datetime(2015, 2, 1, tzinfo=timezone.utc)
        >>> posts = [{"post_id": "p1", "user": "ann", "ts": ts, "text": "Go #Hawks, go!! #SB49"},
        ...          {"post_id": "p2", "user": "bob", "ts": ts, "text": "  "},
        ...          {"post_id": "p3", "user": "cy", "ts": ts, "text": "#SB49"}]
        >>> records = [Record(p, None, "t", 0, i, None, None, None) for i, p in enumerate(posts)]
        >>> out = featurize_posts("feat", load_tokenizer())(records)
        >>> out[0].error_type, out[0].reason
        ('InvalidPost', "text is '  ': nothing to score")
        >>> [(user, e["hashtags"], e["input_ids"].shape) for user, e in out[1:]]
        [('cy', ['sb49'], (64,)), ('ann', ['hawks', 'sb49'], (64,))]
    """

    def featurize(records: list[Record]) -> list[tuple[str, dict[str, Any]] | Rejected]:
        now = datetime.now(timezone.utc)
        out: list[tuple[str, dict[str, Any]] | Rejected] = []
        good: list[dict[str, Any]] = []
        for record in records:
            problem = _problem(record.value, now)
            if problem is None:
                good.append(record.value)
            else:
                out.append(Rejected(step_id, "InvalidPost", problem, record))
        if not good:
            return out
        ids, mask = tokenize(tokenizer, [post["text"] for post in good])
        rows = np.argsort(mask.sum(axis=1), kind="stable") if by_length else range(len(good))
        for row in rows:
            post = good[row]
            features = {
                "hashtags": hashtags_of(post["text"]),
                "input_ids": ids[row],
                "attention_mask": mask[row],
            }
            out.append((post["user"], {**post, **features}))
        return out

    return featurize


def scored_post(key_event: tuple[str, dict[str, Any]]) -> dict[str, Any]:
    """The published form of a scored post: no token arrays, the label by name.

    Examples:
        >>> scored_post(("ann", {"post_id": "p1", "user": "ann", "ts": START, "text": "yay",
        ...     "lang": "en", "hashtags": [], "input_ids": None, "attention_mask": None,
        ...     "label_id": 2, "sentiment": 0.75, "probabilities": [0.05, 0.15, 0.8],
        ...     "model_version": "m"}))["label"]
        'positive'
    """
    _, e = key_event
    p_neg, p_neu, p_pos = e["probabilities"]
    return {
        "post_id": e["post_id"],
        "user": e["user"],
        "ts": e["ts"],
        "text": e["text"],
        "hashtags": e["hashtags"],
        "label": LABELS[e["label_id"]],
        "sentiment": round(float(e["sentiment"]), 5),
        "p_negative": round(float(p_neg), 5),
        "p_neutral": round(float(p_neu), 5),
        "p_positive": round(float(p_pos), 5),
        "model_version": e["model_version"],
    }


def _per_hashtag(post: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    signal = {
        "post_id": post["post_id"],
        "ts": post["ts"],
        "sentiment": post["sentiment"],
        "positive": 1.0 if post["label"] == "positive" else 0.0,
        "negative": 1.0 if post["label"] == "negative" else 0.0,
    }
    return [(tag, signal) for tag in post["hashtags"]]


def window_row(key_row: tuple[str, dict[str, Any]]) -> dict[str, Any]:
    """The published form of one hashtag's window.

    Examples:
        >>> window_row(("nfl", {"key": "nfl", "window_start": START, "window_end": START,
        ...     "sentiment_count": 4.0, "sentiment_mean": -0.5, "positive_mean": 0.25,
        ...     "negative_mean": 0.75}))["posts"]
        4
    """
    _, row = key_row
    return {
        "hashtag": row["key"],
        "window_start": row["window_start"],
        "window_end": row["window_end"],
        "posts": int(row["sentiment_count"]),
        "sentiment_mean": round(row["sentiment_mean"], 5),
        "positive_share": round(row["positive_mean"], 5),
        "negative_share": round(row["negative_mean"], 5),
    }


def build_flow(
    brokers: str,
    *,
    topics: Topics = Topics(),
    registry: Any = None,
    model: Model | str | Path | None = None,
    window: timedelta = timedelta(minutes=10),
    hop: timedelta = timedelta(minutes=2),
    max_delay: timedelta = timedelta(minutes=10),
    max_batch: int = 16,
    max_wait: timedelta = timedelta(milliseconds=50),
    threads: int | None = None,
    source_batch: int = 256,
    tail: bool = False,
) -> Dataflow:
    """The sentiment dataflow over ``brokers``.

    ``registry`` is a schema-registry client or config (default: an
    in-process ``mock://`` registry); the post schema is registered at build
    time, as its producer would have. ``model`` is a :class:`Model` or an ONNX
    path; by default the cached model of
    :func:`examples.social_sentiment.model.build_model` (built on first use).
    Windows of ``window`` sliding every ``hop`` are aligned to
    :data:`~examples.social_sentiment.data.START`; ``max_delay`` is how far
    behind a hashtag's newest post another may arrive and still count (the
    posts topic's partitions are read a batch at a time, so event time
    across them is skewed by up to a batch's span). With ``tail=True`` the flow
    keeps reading and idle hashtags' windows close with the wall clock; with
    ``False`` it stops at the end of the topic and results depend on the
    data only. ``source_batch`` is the most messages decoded and tokenized
    together; ``max_batch`` and ``max_wait`` bound the model's dynamic
    batches; ``threads`` is ONNX Runtime's intra-op thread count (``None``:
    one per core).
    """
    if not isinstance(window, timedelta) or not timedelta(0) < hop <= window:
        raise ValueError(f"need 0 < hop <= window; got hop={hop}, window={window}")
    registry = registry if registry is not None else {"url": "mock://social-sentiment"}
    serde = ConfluentAvroSerde(registry, schema=SCHEMA, subject=f"{topics.posts}-value")
    _ = serde.schema_id
    if model is None:
        model = build_model().path
    if not isinstance(model, Model):
        model = OnnxModel(model, intra_op_threads=threads)
    if set(model.inputs) != {"input_ids", "attention_mask"}:
        raise ValueError(
            f"model must take input_ids and attention_mask (build it with "
            f"examples.social_sentiment.model.build_model); it takes {list(model.inputs)}"
        )
    json_serde = JsonSerde()

    flow = Dataflow("social_sentiment")
    src = kafka.source(
        "posts",
        flow,
        brokers=brokers,
        topics=topics.posts,
        value_serde=serde,
        tail=tail,
        batch_size=source_batch,
    )
    featurized = op.flat_map_batch(
        "featurize", src.oks, featurize_posts("social_sentiment.featurize", load_tokenizer())
    )
    usable = op.branch("usable", featurized, lambda item: type(item) is tuple)
    scored = infer(
        "sentiment",
        usable.trues,
        model,
        inputs={"input_ids": "input_ids", "attention_mask": "attention_mask"},
        outputs={"probabilities": "probabilities", "sentiment": "sentiment", "label": "label_id"},
        max_batch=max_batch,
        max_wait=max_wait,
    )
    posts = op.map("published", scored.oks, scored_post)
    scored_errs = kafka.sink(
        "scored_out",
        posts,
        brokers=brokers,
        topic=topics.scored,
        value_serde=json_serde,
        key=lambda post: post["post_id"],
    )
    windows = window_agg(
        "hashtag_windows",
        op.flat_map("per_hashtag", posts, _per_hashtag),
        timestamp=lambda signal: signal["ts"],
        windower=SlidingWindower(length=window, offset=hop, align_to=START),
        fields={"sentiment": ["count", "mean"], "positive": ["mean"], "negative": ["mean"]},
        max_delay=max_delay,
        idle_advance=tail,
    )
    window_errs = kafka.sink(
        "hashtags_out",
        op.map("window_rows", windows.oks, window_row),
        brokers=brokers,
        topic=topics.hashtags,
        value_serde=json_serde,
        key=lambda row: row["hashtag"],
    )
    kafka.dead_letter_sink(
        "dead_letters",
        op.merge(
            "all_errors",
            src.errs,
            usable.falses,
            scored.errs,
            scored_errs,
            windows.errs,
            windows.late,
            window_errs,
        ),
        brokers=brokers,
        topic=topics.dead_letters,
    )
    return flow
