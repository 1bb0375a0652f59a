"""Shared fixtures: one real Kafka-protocol broker for the whole session."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest
from hypothesis import settings

from streamml.broker import EmbeddedBroker

# A test never fails because the machine was slow: hypothesis's 200 ms deadline per
# example failed a JSON batch-decode test whose first call took 1.6 s on a busy machine.
settings.register_profile("streamml", deadline=None)
settings.load_profile("streamml")

_topic_numbers = itertools.count()


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    """A tansu broker on a free loopback port, shared by every integration test."""
    running = EmbeddedBroker().start()
    try:
        yield running
    finally:
        # tansu's graceful stop waits 5 s for any client still connected (a Bytewax sink's
        # producer, a consumer a test kept); at the session's end nothing in the in-memory
        # broker is worth waiting for, so it gets 1 s before SIGKILL.
        running.stop(timeout=1.0)


@pytest.fixture
def topic_name(request: pytest.FixtureRequest) -> Iterator[str]:
    """A topic name unique to this test (create it with ``broker.create_topic``)."""
    base = "".join(c if c.isalnum() else "-" for c in request.node.name)[:60]
    yield f"{base}-{next(_topic_numbers)}"


_BROKER_WORDS = ("EmbeddedBroker", "streamml.broker", "bootstrap", "brokers=")
"""Text that says a module or a docs page starts or talks to a broker."""


def _needs_broker(item: pytest.Item) -> bool:
    """Whether a test uses the broker: its fixture, its module's own broker, or a docs page's."""
    if "broker" in getattr(item, "fixturenames", ()):
        return True
    page = getattr(getattr(item, "callspec", None), "params", {}).get("page")
    source = page if page is not None else item.path
    text = source.read_text(encoding="utf-8", errors="replace")
    return any(word in text for word in _BROKER_WORDS)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Make the markers mean what the README says, whatever a test file declares.

    ``integration``: the test needs the broker (``-m 'not integration'`` runs the
    others without one); ``reliability``: every test under ``tests/reliability``
    (crash, cluster and outage runs in separate processes).
    """
    for item in items:
        if _needs_broker(item):
            item.add_marker(pytest.mark.integration)
        if "reliability" in item.path.parts:
            item.add_marker(pytest.mark.reliability)
