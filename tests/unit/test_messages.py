"""Message helpers of graph_core.messages that need no server: job ids."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from graph_core.messages import job_id, parse_job_id

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
