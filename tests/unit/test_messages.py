"""Message helpers of graph_core.messages that need no server: job ids, wake-up tokens,
leases."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from graph_core.events import LeaseExpired
from graph_core.messages import (
    encode_inbox,
    encode_lease,
    job_id,
    parse_inbox,
    parse_job_id,
    parse_wake_token,
    wake_token,
)

# --- job ids ------------------------------------------------------------------------------


@given(
    run_id=st.from_regex(r"[A-Za-z0-9_-]{1,20}", fullmatch=True),
    node_id=st.text(min_size=1, max_size=20).filter(lambda s: s.strip() == s and s),
    visit=st.integers(min_value=0, max_value=10**9),
    attempt=st.integers(min_value=0, max_value=10**9),
)
def test_a_job_id_parses_back_into_its_parts(
    run_id: str, node_id: str, visit: int, attempt: int
) -> None:
    assert parse_job_id(job_id(run_id, node_id, visit, attempt)) == (
        run_id,
        node_id,
        visit,
        attempt,
    )


@pytest.mark.parametrize(
    "value",
    [
        "1",
        "",
        "rg:",
        "rg:run",
        "rg:run:node",
        "rg:run:node:1",
        "rg::node:1:1",
        "rg:run::1:1",
        "rg:run:node:x:1",
        "rg:run:node:1:-1",
        "rg:run:node:\u0661:1",  # a non-ASCII digit
        "arq:run:node:1:1",
    ],
)
def test_what_is_not_a_job_id_parses_as_none(value: str) -> None:
    assert parse_job_id(value) is None


@given(
    run_id=st.from_regex(r"[A-Za-z0-9_-]{1,20}", fullmatch=True),
    node_id=st.from_regex(r"[^.\s{}|]{1,20}", fullmatch=True),
    graph_id=st.text(min_size=1, max_size=30),
    version=st.integers(min_value=1, max_value=10**9),
    score=st.none() | st.integers(min_value=-(10**15), max_value=10**15),
)
def test_a_wake_token_carries_its_job_id_graph_and_score(
    run_id: str, node_id: str, graph_id: str, version: int, score: int | None
) -> None:
    jid = job_id(run_id, node_id, 1, 2)
    token = wake_token(jid, graph_id, version, score)
    assert parse_wake_token(token) == (jid, (graph_id, version), score)


@pytest.mark.parametrize("value", ["rg:r:n:1:1|3@|g", "rg:r:n:1:1|3@x1|g", "rg:r:n:1:1|3@-|g"])
def test_a_wake_token_with_a_garbled_score_keeps_its_graph(value: str) -> None:
    assert parse_wake_token(value) == ("rg:r:n:1:1", ("g", 3), None)


@pytest.mark.parametrize("value", ["rg:r:n:1:1", "rg:r:n:1:1|", "rg:r:n:1:1|x|g", "rg:r:n:1:1|3|"])
def test_a_wake_token_without_a_graph_is_just_a_job_id(value: str) -> None:
    assert parse_wake_token(value) == (value.partition("|")[0], None, None)


@given(
    run_id=st.from_regex(r"[A-Za-z0-9_\-]{1,20}", fullmatch=True),
    node_id=st.text(min_size=1, max_size=20),
    visit=st.integers(min_value=1, max_value=10**9),
    attempt=st.integers(min_value=1, max_value=10**9),
    deadline=st.none() | st.floats(min_value=0, max_value=4e9) | st.integers(0, 4 * 10**9),
    item=st.none() | st.integers(min_value=0, max_value=10**9),
)
def test_a_lease_is_encoded_as_its_message_would_be(
    run_id: str, node_id: str, visit: int, attempt: int, deadline: float | None, item: int | None
) -> None:
    message = LeaseExpired(
        run_id=run_id, node_id=node_id, visit=visit, attempt=attempt, deadline=deadline, item=item
    )
    encoded = encode_lease(run_id, node_id, visit, attempt, deadline, item)
    assert encoded == encode_inbox(message)
    assert parse_inbox(encoded) == message
