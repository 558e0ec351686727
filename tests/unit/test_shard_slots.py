"""In the sharded layout, what the dispatcher writes for a run touches one cluster slot: the
apply script's keys for each transition of a run (jobs on two queues, a retry timer, an
approval wait, a cancellation), a submission's, an approval's forwarding, and the keys arq
names after a job id (docs/cluster-plan.md, step 2). Built by the code that builds them,
with no server: a key here outside the run's slot would be a CROSSSLOT on a cluster."""

from __future__ import annotations

import itertools
import string
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from dispatcher.client import WorkflowClient
from dispatcher.queue import IN_PROGRESS_KEY_PREFIX, JOB_KEY_PREFIX
from dispatcher.store import RunStore
from graph_core.engine import Env, advance
from graph_core.events import (
    CancelRequested,
    ErrorInfo,
    Event,
    NodeReported,
    RunSubmitted,
)
from graph_core.keys import Keys, key_slot
from graph_core.memory import MemoryRun, view_of
from graph_core.messages import job_id, parse_job_id
from graph_core.model import Edge, Graph, Node, RetryPolicy, WaitPolicy
from graph_core.state import Transition

run_ids = st.text(alphabet=string.ascii_letters + string.digits + "_-", min_size=1, max_size=64)


def _graph() -> Graph:
    g = Graph(id="slots")
    g.add_nodes(
        Node("start", type="start", fan_out=True),
        Node("a", type="task", queue="q1", retry=RetryPolicy(max_attempts=3)),
        Node("b", type="task", queue="q2"),
        Node("gate", type="human", wait=WaitPolicy(timeout_s=60)),
        Node("end", type="end"),
    )
    g.add_edges(Edge("start", "a"), Edge("start", "b"), Edge("a", "gate"), Edge("gate", "end"))
    return g.validate_graph()


class _Run:
    """A run driven through the pure engine, one event at a time."""

    def __init__(self, graph: Graph, run_id: str) -> None:
        self.graph, self.run_id = graph, run_id
        self.mem = MemoryRun()
        self.now = 1000.0
        self._tokens = (f"tok-{i}" for i in itertools.count(1))

    def send(self, event: Event) -> Transition:
        self.now += 1
        t = advance(self.graph, view_of(self.mem), event, Env(self.now, lambda: next(self._tokens)))
        self.mem.apply(t)
        return t

    def report(self, node_id: str, status: str = "completed", **kw: Any) -> Transition:
        rec = self.mem.nodes[node_id]
        return self.send(
            NodeReported(
                run_id=self.run_id,
                node_id=node_id,
                visit=rec.visits,
                attempt=rec.attempt,
                status=status,
                **kw,
            )
        )

    def transitions(self) -> list[Transition]:
        boom = ErrorInfo(type="Boom", message="try again", retryable=True)
        return [
            self.send(RunSubmitted(run_id=self.run_id, graph_id="slots", graph_version=1)),
            self.report("a", "failed", error=boom),  # a retry timer
            self.send(CancelRequested(run_id=self.run_id)),  # b's queued job is aborted
        ]


def _store(keys: Keys) -> RunStore:
    return RunStore(Redis(), keys)  # no connection is made: the calls are only built


@settings(max_examples=60, deadline=None)
@given(run_id=run_ids, shards=st.sampled_from([1, 3, 16, 256]))
def test_every_apply_of_a_run_touches_the_runs_slot_only(run_id: str, shards: int) -> None:
    keys = Keys("relaygraph", shards=shards)
    store = _store(keys)
    slot = key_slot(keys.run(run_id).meta)
    run = _Run(_graph(), run_id)
    kinds: set[str] = set()
    for rev, t in enumerate(run.transitions()):
        kinds.update(type(a).__name__ for a in t.actions)
        apply_keys, _ = store.apply_call(t, rev, None, 1_000, "1-0", stamp="s")
        assert {key_slot(k) for k in apply_keys} == {slot}, apply_keys
    assert {"EnqueueNode", "ScheduleTimer", "CancelNode"} <= kinds  # the paths were taken


def test_a_waiting_node_and_its_approval_stay_in_the_runs_slot() -> None:
    keys = Keys("relaygraph", shards=16)
    store = _store(keys)
    run = _Run(_graph(), "run-with-a-gate")
    run.send(RunSubmitted(run_id=run.run_id, graph_id="slots", graph_version=1))
    t = run.report("a")  # the gate is reached: the run waits for its approval
    assert any(type(a).__name__ == "PauseForApproval" for a in t.actions), t.actions
    apply_keys, _ = store.apply_call(t, 1, None, 1_000, None, stamp="s")
    assert len({key_slot(k) for k in apply_keys}) == 1


@settings(max_examples=100)
@given(run_id=run_ids, shards=st.sampled_from([1, 16, 256]), key=st.text(min_size=1, max_size=40))
def test_a_submission_touches_its_runs_slot(run_id: str, shards: int, key: str) -> None:
    """Without an idempotency key, the whole submit script is one slot; with one, a run id
    the client makes is put in the key's shard, so the key shares the run's slot too."""
    client = WorkflowClient(Redis(), shards=shards)
    plain = client._submit_keys(run_id, "a graph", None)
    assert len({key_slot(k) for k in plain}) == 1
    keyed_run = client._new_run_id(key)
    keyed = client._submit_keys(keyed_run, "a graph", key)
    assert keyed[0].endswith(f":idem:{key}")
    assert {key_slot(k) for k in keyed} == {key_slot(client.keys.run(keyed_run).meta)}


@settings(max_examples=100)
@given(run_id=run_ids, shards=st.sampled_from([1, 16, 256]))
def test_a_jobs_arq_keys_queue_and_abort_set_share_its_runs_slot(run_id: str, shards: int) -> None:
    keys = Keys("relaygraph", shards=shards)
    shard = keys.shard_for(run_id)
    jid = keys.job_id(run_id, "node:with:colons", 2, 3, item=7)
    assert parse_job_id(jid) == (run_id, "node:with:colons", 2, 3)
    arq_keys = [JOB_KEY_PREFIX + jid, IN_PROGRESS_KEY_PREFIX + jid, "arq:retry:" + jid]
    slots = {key_slot(k) for k in (*arq_keys, shard.queue("q1"), shard.wake("q1"), shard.abort)}
    assert slots == {key_slot(keys.run(run_id).meta)}


def test_one_server_job_ids_are_unchanged_and_a_garbled_tag_is_no_job_id() -> None:
    assert Keys("relaygraph").job_id("r1", "n", 1, 2) == job_id("r1", "n", 1, 2) == "rg:r1:n:1:2"
    assert Keys("relaygraph", shards=16).job_id("run-1", "n", 1, 2) == "rg:{s3-43}:run-1:n:1:2"
    for bad in ("rg:{}:r1:n:1:2", "rg:{s3-43:r1:n:1:2", "rg:{s3-43}"):
        assert parse_job_id(bad) is None
