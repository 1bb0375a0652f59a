"""The article's router: for every Kafka message, one REST call to the model service, one message out.

This is the pattern as the article draws it — a consumer loop that turns each
message into an HTTP request to the microservice and packages the answer
into a second message — written as well as it can be: one kept-alive
connection, orjson, the Open Inference Protocol's JSON, no per-call set-up.
It is the baseline the example's summary compares streamml against.
"""

from __future__ import annotations

import orjson
import urllib3
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from examples.model_microservice.generate import FEATURES
from examples.model_microservice.service import NAME


def per_event_router(bootstrap: str, topic: str, out_topic: str, url: str, limit: int) -> int:
    """Score the first ``limit`` messages of ``topic`` one REST call each; how many it scored."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "per-event-router",
            "enable.partition.eof": True,
            "enable.auto.commit": False,
        }
    )
    parts = sorted(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
    consumer.assign([TopicPartition(topic, p, 0) for p in parts])
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    http = urllib3.connection_from_url(url, maxsize=1)
    path = f"/v2/models/{NAME}/infer"
    headers = {"Content-Type": "application/json"}
    n = ended = 0
    while n < limit and ended < len(parts):
        msg = consumer.poll(1.0)
        if msg is None:
            continue
        if msg.error():
            if msg.error().code() == KafkaError._PARTITION_EOF:
                ended += 1
                continue
            raise RuntimeError(msg.error())
        reading = orjson.loads(msg.value())
        request = {
            "inputs": [
                {
                    "name": "X",
                    "shape": [1, len(FEATURES)],
                    "datatype": "FP32",
                    "data": [reading[f] for f in FEATURES],
                }
            ]
        }
        answer = http.request("POST", path, body=orjson.dumps(request), headers=headers)
        if answer.status != 200:
            raise RuntimeError(f"the model service answered {answer.status}: {answer.data[:200]!r}")
        outputs = {t["name"]: t["data"] for t in orjson.loads(answer.data)["outputs"]}
        reading["p_fail"] = outputs["probabilities"][1]
        producer.produce(out_topic, orjson.dumps(reading), msg.key())
        producer.poll(0)
        n += 1
    producer.flush()
    consumer.close()
    http.close()
    return n
