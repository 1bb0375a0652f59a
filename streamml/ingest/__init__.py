"""``streamml ingest``: an edge agent that gets files, log lines and posts into Kafka.

It watches a directory for new files (camera frames), tails log files
(following rotation), or accepts HTTP POSTs, and produces them to one
Kafka topic, batched and compressed, keyed as you choose; it can run a
model on the device first and send its result with, or instead of, the raw
data.

Guarantees:

- **nothing is lost** while the broker is away: records wait in a bounded
  on-disk spool and go when it is back; when the spool is full the agent
  stops reading its inputs (back-pressure, logged) and drops nothing;
- **nothing is sent twice** across restarts of the agent: positions are kept
  on disk and committed only after the broker confirmed delivery, and
  records whose delivery was in doubt are looked up in the topic (by their
  ``streamml-ingest`` header) before they are sent again.

See ``docs/ingest.md`` and ``streamml ingest --help``.
"""

from streamml.ingest.agent import IngestAgent, SpoolFull
from streamml.ingest.dirwatch import DirWatch
from streamml.ingest.edge import ERROR_HEADER, RESULT_HEADER, EdgeModel
from streamml.ingest.http import HttpInput
from streamml.ingest.keys import key_function
from streamml.ingest.logtail import LogTail
from streamml.ingest.progress import Progress
from streamml.ingest.sender import HEADER, PRODUCER_DEFAULTS, rejected_records
from streamml.ingest.source import Read, Source
from streamml.ingest.spool import Spool

__all__ = [
    "ERROR_HEADER",
    "HEADER",
    "PRODUCER_DEFAULTS",
    "RESULT_HEADER",
    "DirWatch",
    "EdgeModel",
    "HttpInput",
    "IngestAgent",
    "LogTail",
    "Progress",
    "Read",
    "Source",
    "Spool",
    "SpoolFull",
    "key_function",
    "rejected_records",
]
