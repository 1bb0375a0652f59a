"""Kafka I/O as Bytewax operators: a decoding source, an encoding sink, and a dead-letter sink.

Built on Bytewax's public input and output API and confluent-kafka: Kafka
partitions are Bytewax input partitions (the unit of parallelism, their
offsets part of Bytewax recovery, read by
:class:`streamml._kafka_partitions.PartitionReader` one fetch per item), and
the sink is :class:`~streamml.producer.ProducerSink`, which checks every
delivery. streamml decodes and encodes whole batches and routes every
failure to an error stream of :class:`~streamml.errors.Rejected` records,
which :func:`dead_letter_sink` writes to a topic as self-describing JSON.

A typical pipeline::

    src = kafka.source("in", flow, brokers=b, topics=["readings"], value_serde=avro)
    ...                                   # operators on src.oks
    errs = kafka.sink("out", results, brokers=b, topic="scores", value_serde=JsonSerde())
    kafka.dead_letter_sink("dlq", op.merge("all_errs", src.errs, errs), brokers=b, topic="dlq")
"""

from streamml._kafka_partitions import BrokerUnreachable, TopicNotFound
from streamml.kafka._dead_letters import dead_letter_envelope, dead_letter_sink
from streamml.kafka._records import Record, SourceOut
from streamml.kafka._sink import sink
from streamml.kafka._source import SOURCE_DEFAULTS, source

__all__ = [
    "SOURCE_DEFAULTS",
    "BrokerUnreachable",
    "Record",
    "SourceOut",
    "TopicNotFound",
    "dead_letter_envelope",
    "dead_letter_sink",
    "sink",
    "source",
]
