"""parquet_sink on S3: moto's S3 server in its own process on loopback, checked with boto3.

The sink talks to the server through s3fs (fsspec); what it wrote is read
back with boto3, a different S3 client, as a reader of the bucket would.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import bytewax.operators as op
import polars as pl
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main

from streamml.objectstore import ParquetSink, _pieces, parquet_sink
from tests.reliability.harness import free_port

BUCKET = "results"
T0_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    """``python -m moto.server`` on a free loopback port, with an empty bucket."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "AWS_DEFAULT_REGION": "us-east-1"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, "moto.server exited"
            try:
                urllib.request.urlopen(url, timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "moto.server did not answer in 60 s"
                time.sleep(0.1)
        yield url
    finally:
        server.terminate()
        server.wait(10)


@pytest.fixture(scope="module")
def s3(endpoint: str) -> Any:
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **CREDENTIALS)
    client.create_bucket(Bucket=BUCKET)
    return client


def _options(endpoint: str) -> dict[str, Any]:
    return {
        "key": CREDENTIALS["aws_access_key_id"],
        "secret": CREDENTIALS["aws_secret_access_key"],
        "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"},
    }


def _keys(s3: Any, prefix: str) -> list[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def _ids(s3: Any, prefix: str) -> list[int]:
    ids: list[int] = []
    for key in _keys(s3, prefix):
        if key.endswith(".parquet"):
            body = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
            ids += pl.read_parquet(io.BytesIO(body))["id"].to_list()
    return sorted(ids)


def test_a_flow_writes_hive_partitioned_files_to_s3(endpoint: str, s3: Any) -> None:
    frames = [
        pl.DataFrame(
            {
                "id": list(range(i, i + 50)),
                "ts": [T0_MS + j * 50_000 for j in range(i, i + 50)],
                "sensor": [f"s{j % 3}" for j in range(i, i + 50)],
            }
        )
        for i in range(0, 200, 50)
    ]
    flow = Dataflow("parquet_s3")
    errs: list[Any] = []
    up = op.input("in", flow, TestingSource(frames))
    out = parquet_sink(
        "pq",
        up,
        path=f"s3://{BUCKET}/flow",
        time="ts",
        partition_by="sensor",
        parts=2,
        storage_options=_options(endpoint),
    )
    op.output("errs", out, TestingSink(errs))
    run_main(flow)
    assert errs == []
    keys = _keys(s3, "flow/")
    assert not [k for k in keys if k.startswith("flow/_staging/")]
    assert {k.split("/")[1] for k in keys} == {"date=2026-01-01"}
    assert {k.split("/")[3] for k in keys} == {"sensor=s0", "sensor=s1", "sensor=s2"}
    assert {k.split("/")[2] for k in keys} == {"hour=00", "hour=01", "hour=02"}
    assert _ids(s3, "flow/") == list(range(200))


def test_commit_protocol_and_resume_on_s3(endpoint: str, s3: Any) -> None:
    def placed(ids: range, hour: int) -> tuple[str, pl.DataFrame]:
        frame = pl.DataFrame({"id": list(ids), "ts": [T0_MS + hour * 3_600_000] * len(ids)})
        return _pieces("t", "ts", None, frame)[0][0]

    sink = ParquetSink(f"s3://{BUCKET}/protocol", storage_options=_options(endpoint))
    part = sink.build_part("pq", "0", None)
    part.write_batch([placed(range(10), 0)])
    first = part.snapshot()
    assert _ids(s3, "protocol/date=") == []
    assert _keys(s3, "protocol/_staging/") == ["protocol/_staging/part-0-00000000.parquet.tmp"]
    part.write_batch([placed(range(10, 20), 1)])
    part.snapshot()
    assert _ids(s3, "protocol/date=") == list(range(10))
    part.write_batch([placed(range(20, 30), 1)])
    part.snapshot()  # commits rows 10-19, stages 20-29
    # Crash; the last durable snapshot is `first`: rows 10-29 are replayed, so their files go.
    resumed = sink.build_part("pq", "0", first)
    assert _ids(s3, "protocol/") == list(range(10))
    resumed.write_batch([placed(range(10, 30), 1)])
    resumed.close()
    assert _ids(s3, "protocol/") == list(range(30))
