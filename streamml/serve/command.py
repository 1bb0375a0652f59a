"""``streamml serve``: one ONNX model over the Open Inference Protocol until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from streamml.models import Model

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``serve`` subcommand's arguments."""
    parser.add_argument("model", metavar="MODEL.onnx", help="the ONNX model file to serve")
    parser.add_argument("--name", help="the name clients use (default: the file's stem)")
    parser.add_argument(
        "--version",
        help="the first version's label (default: stem@sha256[:8]); "
        "versions loaded later are labelled stem@sha256[:8]",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8000, help="port (0: a free one)")
    parser.add_argument("--max-batch", type=int, default=1024, help="most rows per model call")
    parser.add_argument(
        "--max-wait-ms",
        type=float,
        default=0.0,
        help="longest a request waits for others to share its model call (default 0: "
        "requests that arrive while the model runs share the next call)",
    )
    parser.add_argument(
        "--max-body-mb", type=float, default=64.0, help="largest request body (413 above)"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="ONNX Runtime intra-op threads per model call"
    )
    parser.add_argument(
        "--watch",
        action="store_true",
        help="load the file again whenever it changes; the old version serves "
        "until the new one has loaded and answered a probe",
    )
    parser.add_argument(
        "--watch-interval-ms", type=float, default=500.0, help="how often --watch checks the file"
    )


def _loader(threads: int) -> Callable[[Path], Model]:
    def load(path: Path) -> Model:
        from streamml.models import OnnxModel

        return OnnxModel(path, intra_op_threads=threads)

    return load


def run(args: argparse.Namespace) -> int:
    """Serve until Ctrl-C or SIGTERM; 1 if the model or the address is refused."""
    from streamml.models import OnnxModel
    from streamml.serve.server import serve  # the `serve` extra, needed from here on

    path = Path(args.model)
    name = args.name or path.stem
    try:
        model = OnnxModel(path, version=args.version, intra_op_threads=args.threads)
        server = serve(
            {name: model},
            host=args.host,
            port=args.port,
            max_batch=args.max_batch,
            max_wait=timedelta(milliseconds=args.max_wait_ms),
            max_body_bytes=int(args.max_body_mb * (1 << 20)),
            files={name: path},
            loader=_loader(args.threads),
            watch=timedelta(milliseconds=args.watch_interval_ms) if args.watch else None,
        )
    except (ValueError, RuntimeError) as exc:
        print(f"streamml serve: {exc}", file=sys.stderr)
        return 1
    stop = threading.Event()
    # SIGINT too, by hand: Python leaves it ignored when it starts ignored (a shell's
    # background job), and Ctrl-C is the documented way to stop.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    print(
        f"serving model {name!r} version {model.version!r} at {server.url} "
        f"(pid {os.getpid()}); Ctrl-C stops it",
        flush=True,
    )
    while not stop.wait(0.5):
        pass
    server.stop()
    print("server stopped", flush=True)
    return 0
