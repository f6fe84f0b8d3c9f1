"""A tiny dataflow for tests/deploy/test_deploy.py: proves that processes started by
deploy/k8s-entrypoint.sh form ONE Bytewax cluster.

Numbers 0..N-1 are keyed into buckets and summed per bucket (a stateful step, so
items cross workers); every worker writes what it saw to
``$PROBE_OUT_DIR/worker-<index>.jsonl``: first a line with its index, the
cluster's worker count and its OS pid, then one line per bucket total it owns.
Two processes that formed one cluster report worker_count 2 and their totals
add up to sum(range(N)) once; two separate dataflows would each count everything.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.testing import TestingSource

N = 1000
BUCKETS = 16


class _WorkerFile(StatelessSinkPartition):
    def __init__(self, path: Path, worker_index: int, worker_count: int) -> None:
        self._path = path
        self._write({"worker_index": worker_index, "worker_count": worker_count, "pid": os.getpid()})

    def _write(self, record: dict) -> None:
        with self._path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def write_batch(self, items) -> None:
        for bucket, total in items:
            self._write({"bucket": bucket, "total": total})


class WorkerFileSink(DynamicSink):
    def build(self, step_id: str, worker_index: int, worker_count: int) -> _WorkerFile:
        out = Path(os.environ["PROBE_OUT_DIR"])
        return _WorkerFile(out / f"worker-{worker_index}.jsonl", worker_index, worker_count)


flow = Dataflow("deploy_probe")
numbers = op.input("numbers", flow, TestingSource(range(N)))
keyed = op.key_on("bucket", numbers, lambda n: f"b{n % BUCKETS}")
totals = op.reduce_final("sum", keyed, lambda a, b: a + b)
op.output("out", totals, WorkerFileSink())
