"""A model served as a microservice, called from a Kafka dataflow: the article's pattern end to end.

The failure-risk model of a fleet of machines runs in its own process behind
``streamml serve`` (the Open Inference Protocol over HTTP). Telemetry arrives
on a Kafka topic; a dataflow reads it, scores it through the service with
:class:`streamml.models.RemoteModel` — batched, concurrent requests — and
writes each reading with its ``p_fail`` to a results topic. The summary
compares, on the same events, the article's router (one REST call per
message), streamml's batched concurrent remote calls, and the same model
in-process.
"""
