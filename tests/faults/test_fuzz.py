"""Fuzzing the edges where outside data enters: the wire parsers and graph loading raise
only their own errors, and a dispatcher fed garbage keeps serving."""

from __future__ import annotations

import contextlib
import logging
import random
import secrets
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dispatcher.service import Dispatcher
from dispatcher.settings import DispatcherSettings
from dispatcher.store import RunStore
from graph_core.errors import GraphValidationError, MessageError
from graph_core.keys import Keys
from graph_core.messages import (
    SubmitRequest,
    encode_inbox,
    parse_approval,
    parse_inbox,
    parse_job_payload,
)
from graph_core.model import Graph
from tests.faults.graphs import busy_graph, chain_graph, expected_output, timed_wait_graph
from tests.faults.handlers import Marks
from tests.faults.mutate import (
    encode,
    mutate_bytes,
    mutated_message,
    plausible_message,
    random_bytes,
    random_json,
)
from tests.faults.observe import Observer
from tests.support.fake_worker import FakeWorker, running
from tests.support.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
FUZZ = settings(
    max_examples=300,
    deadline=None,
    database=None,  # no example database written into the checkout
    suppress_health_check=[HealthCheck.too_slow],
)

VALID_INBOX: list[dict[str, Any]] = [
    {
        "v": 1,
        "kind": "submit",
        "graph_id": "chain",
        "graph_version": 1,
        "input": {"n": 150},
        "run_id": "r1",
        "idempotency_key": "k1",
    },
    {
        "kind": "reported",
        "run_id": "r1",
        "node_id": "a",
        "visit": 1,
        "attempt": 1,
        "status": "completed",
        "output": {"x": 1},
        "worker": "w",
    },
    {
        "kind": "reported",
        "run_id": "r1",
        "node_id": "a",
        "visit": 1,
        "attempt": 1,
        "status": "failed",
        "error": {"type": "E", "message": "m", "node_id": "a", "code": "c", "retryable": False},
    },
    {
        "kind": "reported",
        "run_id": "r1",
        "node_id": "a",
        "visit": 1,
        "attempt": 1,
        "status": "waiting",
        "output": "prompt",
    },
    {
        "kind": "approval",
        "run_id": "r1",
        "node_id": "review",
        "decision": "approve",
        "data": {"k": "v"},
        "actor": "a",
        "token": "t",
    },
    {"kind": "cancel", "run_id": "r1", "reason": "why", "actor": "me"},
    {"kind": "timer", "run_id": "r1", "timer": "retry", "node_id": "a", "visit": 1, "attempt": 2},
    {"kind": "timer", "run_id": "r1", "timer": "wait_timeout", "node_id": "review", "visit": 1},
    {"kind": "timer", "run_id": "r1", "timer": "run_timeout"},
    {
        "kind": "lease_expired",
        "run_id": "r1",
        "node_id": "a",
        "visit": 1,
        "attempt": 1,
        "deadline": 1.5,
    },
    {"kind": "fail", "run_id": "r1", "reason": "r", "code": "poison", "actor": "dispatcher"},
]
VALID_APPROVAL: dict[str, Any] = {
    "run_id": "r1",
    "node_id": "review",
    "decision": "reject",
    "data": {"feedback": "no"},
    "actor": "bob",
    "token": "tok",
}
VALID_JOB: dict[str, Any] = {
    "v": 1,
    "run_id": "r1",
    "graph_id": "chain",
    "graph_version": 1,
    "node_id": "a",
    "visit": 1,
    "attempt": 1,
    "timeout_s": 2.5,
    "parent": "p",
}


def _valid_graphs() -> list[dict[str, Any]]:
    graphs = [busy_graph().to_dict(), chain_graph(max_attempts=3).to_dict()]
    graphs.append(timed_wait_graph(5).to_dict())
    for path in sorted(ROOT.glob("examples/*/graph.json")):
        graphs.append(orjson.loads(path.read_bytes()))
    return graphs


VALID_GRAPHS = _valid_graphs()

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(["submit", "reported", "approval", "timer", "cancel", "r1", "a"]),
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(
            st.sampled_from(["kind", "run_id", "node_id", "id", "nodes", "edges", "type", "v"])
            | st.text(max_size=8),
            children,
            max_size=6,
        )
    ),
    max_leaves=30,
)


def _parse_inbox(raw: bytes) -> None:
    with contextlib.suppress(MessageError):  # the one error it may raise; anything else fails
        parse_inbox(raw)


def _parse_approval(raw: bytes) -> None:
    with contextlib.suppress(MessageError):  # the one error it may raise; anything else fails
        parse_approval(raw)


def _parse_job(data: Any) -> None:
    with contextlib.suppress(MessageError):  # the one error it may raise; anything else fails
        parse_job_payload(data)


def _load_graph_dict(data: Any) -> None:
    with contextlib.suppress(
        GraphValidationError
    ):  # the one error it may raise; anything else fails
        Graph.from_dict(data)


def _load_graph_json(raw: bytes) -> None:
    with contextlib.suppress(
        GraphValidationError
    ):  # the one error it may raise; anything else fails
        Graph.from_json(raw)


# --- the parsers: only their own errors ------------------------------------------------------


@FUZZ
@given(st.binary(max_size=300))
def test_fuzz_parsers_on_random_bytes(raw: bytes) -> None:
    _parse_inbox(raw)
    _parse_approval(raw)
    _load_graph_json(raw)


@FUZZ
@given(json_values)
def test_fuzz_parsers_on_random_json(value: Any) -> None:
    raw = encode(value)
    _parse_inbox(raw)
    _parse_approval(raw)
    _parse_job(value)
    _load_graph_dict(value)
    _load_graph_json(raw)


@FUZZ
@given(st.randoms(use_true_random=False), st.sampled_from(VALID_INBOX))
def test_fuzz_parse_inbox_on_mutated_messages(rng: random.Random, base: dict[str, Any]) -> None:
    message = mutated_message(rng, base)
    _parse_inbox(encode(message))
    _parse_inbox(mutate_bytes(rng, encode(base)))


@FUZZ
@given(st.randoms(use_true_random=False))
def test_fuzz_parse_approval_and_job_on_mutated_messages(rng: random.Random) -> None:
    approval = mutated_message(rng, VALID_APPROVAL)
    _parse_approval(encode(approval))
    _parse_approval(mutate_bytes(rng, encode(VALID_APPROVAL)))
    _parse_job(mutated_message(rng, VALID_JOB))


@FUZZ
@given(st.randoms(use_true_random=False), st.sampled_from(VALID_GRAPHS))
def test_fuzz_graph_loading_on_mutated_graphs(rng: random.Random, base: dict[str, Any]) -> None:
    _load_graph_dict(mutated_message(rng, base))
    _load_graph_json(mutate_bytes(rng, encode(base)))


def test_fuzz_the_valid_bases_do_parse() -> None:
    """The mutation bases are valid: the fuzzing starts from messages that get deep."""
    for message in VALID_INBOX:
        parse_inbox(encode(message))
    parse_approval(encode(VALID_APPROVAL))
    parse_job_payload(VALID_JOB)
    for graph in VALID_GRAPHS:
        Graph.from_dict(graph)


# --- a dispatcher fed garbage keeps working ----------------------------------------------------

ENTRIES = 200
PUBLISHES = 60


def _pools(token: str) -> dict[str, list[Any]]:
    """Field values that parse: ids of the live runs and their nodes, small counters, every
    status, decision, timer and kind; an empty list means any JSON value."""
    return {
        "run_id": ["done", "held", "ghost", "g-1"],
        "node_id": ["a", "b", "c", "big", "small", "start", "end", "review", "drop", "nope"],
        "visit": [1, 1, 2, 3],
        "attempt": [1, 1, 2, 3],
        "status": ["completed", "waiting", "failed"],
        "decision": ["approve", "reject"],
        "timer": ["retry", "wait_timeout", "run_timeout"],
        "kind": ["submit", "reported", "approval", "cancel", "timer", "lease_expired", "fail"],
        "graph_id": ["chain", "held", "nope"],
        "graph_version": [1, 2],
        "deadline": [None, 0.0, 4e9],
        "token": [token, "wrong"],
        "output": [],
        "input": [],
    }


def _fuzz_entries(
    rng: random.Random, bases: list[dict[str, Any]], pools: dict[str, list[Any]]
) -> list[dict[Any, bytes]]:
    entries: list[dict[Any, bytes]] = []
    for _ in range(ENTRIES):
        roll = rng.random()
        if roll < 0.4:
            raw = encode(plausible_message(rng, rng.choice(bases), pools))
        elif roll < 0.55:
            raw = encode(mutated_message(rng, rng.choice(bases)))
        elif roll < 0.65:
            raw = mutate_bytes(rng, encode(rng.choice(bases)))
        elif roll < 0.8:
            raw = encode(random_json(rng))
        elif roll < 0.9:
            raw = random_bytes(rng)
        else:
            raw = encode(rng.choice(bases))  # valid, but stale or duplicate by now
        field = b"m" if rng.random() < 0.93 else rng.choice((b"x", b"M", b""))
        entries.append({field: raw})
    return entries


@pytest.mark.parametrize("seed", [20240601, 7, 99])
async def test_fuzz_dispatcher_keeps_working(
    seed: int, redis: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="relaygraph.dispatcher")
    prefix = f"fuzz-{secrets.token_hex(3)}"
    keys = Keys(prefix)
    d = Dispatcher(redis, DispatcherSettings(prefix=prefix, claim_idle_s=1.0, consumer="fuzz"))
    store = RunStore(redis, keys)
    observe = Observer(redis, keys, Marks(prefix))
    for graph in (chain_graph(), timed_wait_graph(600, graph_id="held")):
        await store.register_graph(graph.validate_graph())
    worker = FakeWorker(redis, keys, {"*": lambda n, p: {"node": n, "visit": p["visit"]}})
    rng = random.Random(seed)

    async def submit(graph_id: str, run_id: str, data: Any) -> None:
        msg = SubmitRequest(graph_id=graph_id, run_id=run_id, input=data)
        await redis.xadd(keys.inbox, {"m": encode_inbox(msg)})

    async with running(d, worker):
        # Live runs for the fuzzed messages to hit: one finished, one waiting for approval.
        await submit("chain", "done", {"n": 5})
        await submit("held", "held", {})
        await observe.wait_finished(["done"], timeout=15)
        token = (await wait_for(lambda: redis.hget(keys.run("held").waits, "review"))).decode()
        bases = _bases_for(token)
        for fields in _fuzz_entries(rng, bases, _pools(token)):
            await redis.xadd(keys.inbox, fields)
        for _ in range(PUBLISHES):
            approval = dict(VALID_APPROVAL, run_id="held", token=token)
            raw = rng.choice(
                (
                    encode(mutated_message(rng, approval)),
                    mutate_bytes(rng, encode(approval)),
                    random_bytes(rng),
                    encode(random_json(rng)),
                )
            )
            await redis.publish(keys.approvals_channel, raw)

        # Afterwards both paths still work: the inbox (a run) and the channel (an approval).
        await submit("chain", "after-fuzz", {"n": 150})
        await submit("held", "held-2", {})
        token2 = await wait_for(lambda: redis.hget(keys.run("held-2").waits, "review"))
        approval = dict(VALID_APPROVAL, run_id="held-2", decision="approve", token=token2.decode())
        await redis.publish(keys.approvals_channel, encode(approval))
        records = await observe.wait_finished(["after-fuzz", "held-2"], timeout=20)

        async def drained() -> bool:
            return await observe.backlog() == 0

        await wait_for(drained, timeout=30, message="every fuzzed entry handled")
        dead = await redis.xrange(keys.deadletter)

    record = records["after-fuzz"]
    assert record.status.value == "completed", record.error
    assert record.output == expected_output(150)
    assert records["held-2"].status.value == "completed", records["held-2"].error
    assert records["held-2"].output == {"node": "ship", "visit": 1}
    sources = {f[b"source"].decode() for _, f in dead}
    reasons = [f[b"reason"].decode() for _, f in dead]
    assert len(dead) >= ENTRIES // 4, f"only {len(dead)} dead letters"
    assert sources == {"inbox", "approvals"}
    assert all(r.strip() for r in reasons), "a dead letter without a reason"
    crashes = [r.getMessage() for r in caplog.records if "error handling inbox entry" in r.msg]
    poisoned = [r for r in reasons if r.startswith("handling failed")]
    print(
        f"\nfuzz seed {seed}: {ENTRIES} entries + {PUBLISHES} publishes -> "
        f"{len(dead)} dead letters; {len(crashes)} unexpected handling errors, "
        f"{len(poisoned)} poisoned entries"
    )
    assert not crashes, f"fuzzed entries crashed the handler: {crashes[:5]}"


def _bases_for(token: str) -> list[dict[str, Any]]:
    """The valid messages pointed at the live runs, so that mutations reach deep code: the
    approval-ish ones at the waiting run (with its token), the rest at the finished one."""
    bases = []
    for message in VALID_INBOX:
        if message["kind"] == "submit":
            bases.append(message)  # starts new runs of the chain graph
        elif message["kind"] == "approval" or message.get("node_id") == "review":
            bases.append(
                dict(
                    message,
                    run_id="held",
                    **({"token": token} if message["kind"] == "approval" else {}),
                )
            )
        else:
            bases.append(dict(message, run_id="done"))
    return bases
