"""docs/protocol.md's walkthrough, executed as written.

The setup block's commands start what the doc says (``relaygraph register`` and
``relaygraph up`` with the shipped approval example) against the suite's server; then every
``redis-cli`` line of the walkthrough runs, in order, through a plain redis-py client (no
relaygraph code), and every block the doc shows after them is checked against what came
back: replies, events on the events channel, dead letters. Only times and tokens may
differ from the doc. A block without a ``<!-- walkthrough: ... -->`` marker fails the test,
so the doc cannot grow an example that is not run.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.docs.protocol_doc import Block, blocks, doc_text, section
from tests.support.waiting import wait_until_sync

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
RELAYGRAPH = str(Path(sys.executable).parent / "relaygraph")
WALKTHROUGH = "Walkthrough: an approval from a shell"
# Values that differ from run to run: only their type is compared.
VOLATILE = frozenset(
    {"at", "created_at", "updated_at", "finished_at", "started_at", "since", "token"}
)
# Commands that only read: their reply is re-read until it matches (or the deadline passes),
# since what they read is written by a dispatcher a moment later.
READS = frozenset({"GET", "HGET", "HGETALL", "XRANGE", "XREVRANGE", "XLEN", "TTL"})
DEADLINE_S = 30.0
_ASSIGN = re.compile(r"^([A-Z_][A-Z0-9_]*)=\$\((.*)\)$")
_VAR = re.compile(r"\$([A-Z_][A-Z0-9_]*)")


# --- the deployment the setup block describes ---------------------------------------------


@dataclass
class Deployment:
    env: dict[str, str]
    log: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def log_tail(self, n: int = 40) -> str:
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(lines[-n:])

    def relaygraph(self, args: list[str]) -> None:
        done = subprocess.run(
            [RELAYGRAPH, *args],
            check=False,
            cwd=ROOT,
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=60,
        )
        assert done.returncode == 0, f"relaygraph {shlex.join(args)}: {done.stderr.decode()}"

    def start(self, args: list[str]) -> None:
        with self.log.open("ab") as out:
            proc = subprocess.Popen(
                [RELAYGRAPH, *args],
                cwd=ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.procs.append(proc)

        def started() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"relaygraph {shlex.join(args)} exited:\n{self.log_tail()}")
            return "relaygraph up:" in self.log.read_text(errors="replace")

        wait_until_sync(started, timeout=60, interval=0.05, message="relaygraph up serving")

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def run_setup(block: Block, redis_url: str, log: Path) -> Deployment:
    """Do what the setup block says: the exported Redis URL becomes the suite's server."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAYGRAPH_")}
    deployment = Deployment(env, log)
    for argv in _command_lines(block):
        if argv[0] == "export":
            name, _, _value = argv[1].partition("=")
            assert name == "RELAYGRAPH_REDIS_URL", f"setup exports {name}"
            env[name] = redis_url
        elif argv[:2] == ["relaygraph", "register"]:
            deployment.relaygraph(argv[1:])
        elif argv[:2] == ["relaygraph", "up"]:
            deployment.start(argv[1:])
        else:
            raise AssertionError(f"the setup block has a command this test cannot run: {argv}")
    assert deployment.procs, "the setup block starts no dispatcher"
    return deployment


def _command_lines(block: Block) -> Iterator[list[str]]:
    for line in block.text.splitlines():
        argv = shlex.split(line, comments=True)
        if argv:
            yield argv


# --- the events channel ---------------------------------------------------------------


class EventFeed:
    """Events heard on the channel since SUBSCRIBE; each is matched by at most one block."""

    def __init__(self, pubsub: Any) -> None:
        self.pubsub = pubsub
        self.seen: list[dict[str, Any]] = []
        self.matched: list[int] = []

    def _read(self, timeout: float) -> None:
        msg = self.pubsub.get_message(ignore_subscribe_messages=True, timeout=timeout)
        if msg is not None and msg["type"] == "message":
            self.seen.append(json.loads(msg["data"]))

    def next(self, type_: str, run_id: str | None) -> dict[str, Any]:
        """The first event not matched yet with this type (and run id), waiting for it."""
        deadline = time.monotonic() + DEADLINE_S
        while True:
            for i, event in enumerate(self.seen):
                wanted = event.get("type") == type_ and event.get("run_id") == run_id
                if wanted and i not in self.matched:
                    self.matched.append(i)
                    return event
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"no {type_} event of run {run_id!r} within {DEADLINE_S}s; "
                    f"events seen: {json.dumps(self.seen, indent=1)}"
                )
            self._read(min(remaining, 0.5))

    def last(self, type_: str) -> dict[str, Any] | None:
        """The latest matched event of this type."""
        for i in reversed(self.matched):
            if self.seen[i].get("type") == type_:
                return self.seen[i]
        return None


# --- comparing what the doc shows with what came back ---------------------------------


def assert_like(documented: Any, actual: Any, path: str = "$") -> None:
    """``actual`` has exactly the documented shape and values; values under VOLATILE keys
    only need the documented type."""
    if isinstance(documented, dict):
        assert isinstance(actual, dict), f"{path}: {actual!r} is not an object"
        assert set(actual) == set(documented), (
            f"{path}: keys {sorted(actual)} differ from the documented {sorted(documented)}"
        )
        for key, value in documented.items():
            if key in VOLATILE:
                assert _same_type(value, actual[key]), f"{path}.{key}: {actual[key]!r}"
            else:
                assert_like(value, actual[key], f"{path}.{key}")
    elif isinstance(documented, list):
        assert isinstance(actual, list) and len(actual) == len(documented), f"{path}: {actual!r}"
        for i, (d, a) in enumerate(zip(documented, actual, strict=True)):
            assert_like(d, a, f"{path}[{i}]")
    else:
        assert _same_type(documented, actual) and actual == documented, (
            f"{path}: {actual!r}, documented {documented!r}"
        )


def _same_type(documented: Any, actual: Any) -> bool:
    if isinstance(documented, bool) or isinstance(actual, bool):
        return type(documented) is type(actual)
    if isinstance(documented, int | float):
        return isinstance(actual, int | float)
    return type(documented) is type(actual)


def cli_format(reply: Any) -> str:
    """A scalar reply as redis-cli prints it in a terminal."""
    if reply is None:
        return "(nil)"
    if isinstance(reply, int):
        return f"(integer) {reply}"
    return json.dumps(reply)


def dead_letters(text: str) -> list[dict[str, str]]:
    """The doc's dead-letter listing: entries separated by blank lines, ``field  value``."""
    entries = []
    for chunk in text.strip().split("\n\n"):
        fields = {}
        for line in chunk.splitlines():
            name, _, value = line.partition(" ")
            fields[name] = value.strip()
        entries.append(fields)
    return entries


# --- the shell ------------------------------------------------------------------------


class Shell:
    """Runs the walkthrough's lines: ``redis-cli ARGS`` and ``VAR=$(redis-cli ARGS)``, with
    ``$VAR`` expanded, through a plain redis-py client."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.vars: dict[str, str] = {}
        self.feed: EventFeed | None = None
        self.last: list[str] | None = None
        self.reply: Any = None

    def expand(self, value: str) -> str:
        def var(m: re.Match[str]) -> str:
            assert m.group(1) in self.vars, f"${m.group(1)} is used before it is set"
            return self.vars[m.group(1)]

        return _VAR.sub(var, value)

    def run_block(self, block: Block) -> None:
        for line in block.text.splitlines():
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                continue
            assign = _ASSIGN.match(stripped)
            if assign:
                value = self.command(shlex.split(assign.group(2)))
                assert isinstance(value, str), f"{stripped}: replied {value!r}"
                self.vars[assign.group(1)] = value
                self.check_assignment(assign.group(1), value)
            else:
                self.reply = self.command(shlex.split(stripped, comments=True))

    def command(self, argv: list[str]) -> Any:
        assert argv[0] == "redis-cli", f"the walkthrough may only use redis-cli: {argv}"
        args = [self.expand(a) for a in argv[1:]]
        self.last = args
        if args[0].upper() == "SUBSCRIBE":
            pubsub = self.client.pubsub()
            pubsub.subscribe(*args[1:])
            confirmed = pubsub.get_message(timeout=DEADLINE_S)
            assert confirmed is not None and confirmed["type"] == "subscribe", confirmed
            self.feed = EventFeed(pubsub)
            return None
        return self.client.execute_command(*args)

    def check_assignment(self, name: str, value: str) -> None:
        if name == "TOKEN":  # the waits hash holds the token the node.waiting event carried
            waiting = self.events().last("node.waiting")
            assert waiting is not None and waiting["data"]["token"] == value, (waiting, value)

    def events(self) -> EventFeed:
        assert self.feed is not None, "the walkthrough expects events before it subscribes"
        return self.feed

    def check(self, block: Block) -> None:
        kind, *options = (block.marker or "").split()[1:]
        if kind == "event":
            self.check_event(block, options)
        elif kind == "reply":
            self.until_matches(block, self.check_reply)
        elif kind == "deadletter":
            self.until_matches(block, self.check_dead_letters)
        else:
            raise AssertionError(f"line {block.line}: unknown marker {block.marker!r}")

    def check_event(self, block: Block, options: list[str]) -> None:
        type_, *where = options
        documented = json.loads(block.text)
        for option in where:
            key, _, value = option.partition("=")
            documented[key] = self.expand(value)
        assert documented["type"] == type_, f"line {block.line}: marker and event disagree"
        event = self.events().next(type_, documented["run_id"])
        assert_like(documented, event, f"event {type_} (line {block.line})")

    def check_reply(self, block: Block) -> None:
        if block.lang == "json":
            assert isinstance(self.reply, str), f"{self.last} replied {self.reply!r}"
            assert_like(json.loads(block.text), json.loads(self.reply), f"reply of {self.last}")
        else:
            assert cli_format(self.reply) == block.text.strip(), (self.last, self.reply)

    def check_dead_letters(self, block: Block) -> None:
        documented = dead_letters(block.text)
        entries = [fields for _id, fields in self.reply or []]
        assert len(entries) == len(documented), entries
        for doc, actual in zip(documented, entries, strict=True):
            assert list(actual) == list(doc), (actual, doc)
            float(actual["at"])
            assert {k: v for k, v in actual.items() if k != "at"} == {
                k: v for k, v in doc.items() if k != "at"
            }

    def until_matches(self, block: Block, check: Callable[[Block], None]) -> None:
        """Check the last reply; a read is re-run until it matches (dispatchers write it a
        moment after the command that caused it), up to the deadline."""
        last = self.last
        assert last is not None, f"line {block.line}: a reply before any command"
        failure: list[AssertionError] = []

        def matches() -> bool:
            try:
                check(block)
                return True
            except AssertionError as e:
                if last[0].upper() not in READS:
                    raise
                failure[:] = [e]
            self.reply = self.client.execute_command(*last)
            return False

        wait_until_sync(
            matches,
            timeout=DEADLINE_S,
            interval=0.02,
            message=lambda: f"{shlex.join(last)} to reply as documented: {failure[0]}",
        )


# --- the test -------------------------------------------------------------------------


@pytest.fixture
def plain_client(redis_url: str) -> Iterator[redis.Redis]:
    """A plain redis-py client on the suite's server, emptied first (the walkthrough uses
    the default prefix)."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.flushall()
    yield client
    client.close()


def test_the_walkthrough_runs_as_documented(
    plain_client: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    steps = blocks(section(doc_text(), WALKTHROUGH))
    unmarked = [b.line for b in steps if not (b.marker or "").startswith("walkthrough:")]
    assert not unmarked, f"walkthrough blocks without a marker (section lines {unmarked})"
    setup, *rest = steps
    assert setup.marker == "walkthrough: setup", "the walkthrough starts with its setup"
    deployment = run_setup(setup, redis_url, tmp_path / "up.log")
    try:
        # The dispatcher listens for published approvals before the first one is sent.
        wait_until_sync(
            lambda: (
                dict(plain_client.pubsub_numsub("relaygraph:approvals"))["relaygraph:approvals"]
                >= 1
            ),
            timeout=DEADLINE_S,
            message="a dispatcher subscribed to relaygraph:approvals",
        )
        shell = Shell(plain_client)
        try:
            for block in rest:
                if block.marker == "walkthrough: run":
                    shell.run_block(block)
                else:
                    shell.check(block)
        except AssertionError as e:
            raise AssertionError(
                f"{e}\n--- relaygraph up's log ---\n{deployment.log_tail()}"
            ) from e
        feed = shell.events()
        assert len(feed.matched) >= 8
        assert {e.get("v") for e in feed.seen} == {1}, "every event carries v: 1"
    finally:
        deployment.stop()
