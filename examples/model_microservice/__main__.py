"""Run the model-as-a-microservice example end to end: broker, model service, three ways to score.

python -m examples.model_microservice --events 200000
python -m examples.model_microservice --brokers kafka:9092
"""

from __future__ import annotations

import argparse
import json
import time
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path

import numpy as np
import orjson
from bytewax.testing import run_main

from examples.common import add_broker_arguments, open_broker, unique_topics
from examples.model_microservice.flow import Topics, build_flow
from examples.model_microservice.generate import telemetry
from examples.model_microservice.model import build_model
from examples.model_microservice.router import per_event_router
from examples.model_microservice.service import NAME, ModelService
from streamml.broker import create_topics
from streamml.models import OnnxModel
from streamml.models.remote import OpenInference, RemoteModel
from streamml.testing import consume_all, produce_all
from streamml.tuning import relaxed_gc


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m examples.model_microservice",
        description=(
            "Serve a failure-risk MLP with `streamml serve` in its own process, produce machine "
            "telemetry to Kafka, and score it three ways on the same events: the article's router "
            "(one REST call per message), a streamml dataflow calling the service with batched "
            "concurrent requests, and the same dataflow with the model in-process. Prints and "
            "writes a summary (events/s of each, ratios, agreement of the scores)."
        ),
    )
    parser.add_argument(
        "--events", type=int, default=200_000, help="readings (default: %(default)s)"
    )
    parser.add_argument(
        "--rest-events",
        type=int,
        default=5_000,
        help="readings the per-event router scores; its rate is per event (default: %(default)s)",
    )
    add_broker_arguments(parser)
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("out/model_microservice"),
        help="where the model and summary go (default: %(default)s)",
    )
    parser.add_argument("--quiet", action="store_true", help="only the summary")
    args = parser.parse_args(argv)
    if args.events < 1 or args.rest_events < 1:
        parser.error("--events and --rest-events must be >= 1")
    args.rest_events = min(args.rest_events, args.events)
    return args


def _scores(bootstrap: str, topic: str) -> dict[int, float]:
    return {
        r["seq"]: r["p_fail"]
        for r in (orjson.loads(m.value) for m in consume_all(bootstrap, topic))
    }


def _run_flow(bootstrap: str, topics: Topics, model: object) -> float:
    started = time.perf_counter()
    with relaxed_gc():  # see streamml.tuning
        run_main(build_flow(bootstrap, topics, model))
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    say = (lambda *a: None) if args.quiet else print
    model_path = build_model(args.out / "model" / "failure_risk.onnx")
    with ExitStack() as stack:
        bootstrap = open_broker(stack, args.brokers)
        base = unique_topics(Topics()) if args.brokers else Topics()
        runs = {
            name: replace(
                base, scored=f"{base.scored}-{name}", dead_letters=f"{base.dead_letters}-{name}"
            )
            for name in ("rest", "remote", "local")
        }
        create_topics(bootstrap, [base.telemetry], partitions=2)
        create_topics(
            bootstrap, [t for r in runs.values() for t in (r.scored, r.dead_letters)], partitions=1
        )
        produced = produce_all(bootstrap, base.telemetry, telemetry(args.events))
        say(f"produced {produced:,} telemetry readings to {base.telemetry!r}")

        service = stack.enter_context(ModelService(model_path))
        say(f"streamml serve: model {NAME!r} at {service.url} (its own process)")

        started = time.perf_counter()
        rest_n = per_event_router(
            bootstrap, base.telemetry, runs["rest"].scored, service.url, args.rest_events
        )
        rest_s = time.perf_counter() - started
        say(f"per-event REST router: {rest_n:,} readings in {rest_s:.1f} s")

        remote = RemoteModel(
            service.url, OpenInference(NAME, binary=True), max_rows=10_000, max_in_flight=2
        )
        remote_s = _run_flow(bootstrap, runs["remote"], remote)
        requests = remote.stats()["requests"]
        remote.close()
        say(
            f"streamml, remote model: {produced:,} readings in {remote_s:.1f} s ({requests} requests)"
        )

        local_s = _run_flow(bootstrap, runs["local"], OnnxModel(model_path, intra_op_threads=1))
        say(f"streamml, model in-process: {produced:,} readings in {local_s:.1f} s")

        scores = {name: _scores(bootstrap, r.scored) for name, r in runs.items()}
        dead = {name: len(consume_all(bootstrap, r.dead_letters)) for name, r in runs.items()}

    local = scores["local"]
    seqs = sorted(local)
    same_remote = sorted(scores["remote"]) == seqs and np.allclose(
        [scores["remote"][s] for s in seqs], [local[s] for s in seqs], atol=1e-5
    )
    rest_seqs = sorted(scores["rest"])
    same_rest = set(rest_seqs) <= set(local) and np.allclose(
        [scores["rest"][s] for s in rest_seqs], [local[s] for s in rest_seqs], atol=1e-5
    )
    rate = {
        "per_event_rest": rest_n / rest_s,
        "streamml_remote": len(scores["remote"]) / remote_s,
        "streamml_in_process": len(local) / local_s,
    }
    summary = {
        "events_in": produced,
        "scored": {
            "per_event_rest": rest_n,
            "streamml_remote": len(scores["remote"]),
            "streamml_in_process": len(local),
        },
        "dead_lettered": {"streamml_remote": dead["remote"], "streamml_in_process": dead["local"]},
        "accounted_for": len(scores["remote"]) + dead["remote"]
        == produced
        == len(local) + dead["local"],
        "events_per_second": {k: round(v) for k, v in rate.items()},
        "remote_vs_per_event_rest": round(rate["streamml_remote"] / rate["per_event_rest"], 1),
        "remote_vs_in_process": round(rate["streamml_remote"] / rate["streamml_in_process"], 2),
        "remote_requests": requests,
        "same_scores": {
            "remote_vs_in_process": bool(same_remote),
            "rest_vs_in_process": bool(same_rest),
        },
        "flagged": int(sum(p > 0.5 for p in local.values())),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("\nsummary (the same telemetry, the same MLP, one machine)")
    for name, label in [
        ("per_event_rest", "per-event REST call per message (the article's router)"),
        ("streamml_remote", "streamml -> streamml serve, batched concurrent requests"),
        ("streamml_in_process", "streamml, the same model in-process (ONNX Runtime)"),
    ]:
        print(f"  {label:<58} {rate[name]:>10,.0f} events/s")
    print(
        f"  remote = {summary['remote_vs_per_event_rest']}x the per-event router, "
        f"{summary['remote_vs_in_process']:.0%} of in-process; {requests} requests for "
        f"{produced:,} readings; scores agree: {same_remote and same_rest}; "
        f"flagged {summary['flagged']:,}; every reading accounted for: {summary['accounted_for']}"
    )
    print(f"  written: {args.out / 'summary.json'}")
    return 0 if summary["accounted_for"] and same_remote and same_rest else 1


if __name__ == "__main__":
    raise SystemExit(main())
