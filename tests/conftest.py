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
