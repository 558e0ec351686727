"""The log formats: one JSON object per line with the ids of the run being handled (from the
record's extras or from ``log_context``), and the text format as before."""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from graph_core.logfmt import (
    TEXT_FORMAT,
    JsonFormatter,
    current_context,
    formatter,
    log_context,
    stderr_handler,
)


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger("test.logfmt")
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    log.propagate = False
    yield log, out
    log.removeHandler(handler)
    log.propagate = True


def lines(out: io.StringIO) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in out.getvalue().splitlines()]


def test_a_line_has_time_level_logger_and_message(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    log, out = captured
    log.warning("two\nlines of %s", "text")
    [line] = lines(out)  # a newline in the message stays inside the one JSON line
    assert line.keys() == {"ts", "level", "logger", "message"}
    assert (line["level"], line["logger"], line["message"]) == (
        "WARNING",
        "test.logfmt",
        "two\nlines of text",
    )
    assert len(line["ts"]) == len("2026-12-05T10:11:12.345Z") and line["ts"].endswith("Z")


def test_ids_come_from_the_context_and_from_extras(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    log, out = captured
    with log_context(run_id="r1", node_id=None, graph_id="g"):
        log.info("in the run")
        with log_context(node_id="n1", visit=2, attempt=1):
            log.info("in the node")
        log.info("extra wins", extra={"run_id": "r2"})
    log.info("outside")
    inside, node, extra, outside = lines(out)
    assert (inside["run_id"], inside["graph_id"]) == ("r1", "g") and "node_id" not in inside
    assert (node["run_id"], node["node_id"], node["visit"], node["attempt"]) == ("r1", "n1", 2, 1)
    assert extra["run_id"] == "r2" and extra["graph_id"] == "g"
    assert not {"run_id", "node_id", "graph_id"} & outside.keys()
    assert current_context() == {}


def test_exceptions_are_one_string(captured: tuple[logging.Logger, io.StringIO]) -> None:
    log, out = captured
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("it failed")
    [line] = lines(out)
    assert line["message"] == "it failed"
    assert isinstance(line["exc_info"], str)
    assert line["exc_info"].startswith("Traceback") and "ValueError: boom" in line["exc_info"]


def test_values_json_cannot_hold_become_strings(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    log, out = captured
    log.info("odd id", extra={"run_id": object()})
    [line] = lines(out)
    assert line["run_id"].startswith("<object object")


async def test_each_task_has_its_own_ids_and_threads_inherit_them(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    log, out = captured
    gate = asyncio.Event()
    entered = {r: asyncio.Event() for r in ("a", "b")}

    async def job(run_id: str) -> None:
        with log_context(run_id=run_id):
            entered[run_id].set()
            await gate.wait()  # both tasks are inside their blocks at once
            await asyncio.to_thread(log.info, "from a thread")

    tasks = [asyncio.create_task(job(r)) for r in entered]
    await asyncio.gather(*(e.wait() for e in entered.values()))
    gate.set()
    await asyncio.gather(*tasks)
    assert sorted(line["run_id"] for line in lines(out)) == ["a", "b"]


def test_formatter_by_name() -> None:
    assert isinstance(formatter("json"), JsonFormatter)
    text = formatter("text")
    assert not isinstance(text, JsonFormatter) and text._fmt == TEXT_FORMAT
    assert isinstance(stderr_handler("json").formatter, JsonFormatter)
    with pytest.raises(ValueError, match="xml"):
        formatter("xml")  # type: ignore[arg-type]
