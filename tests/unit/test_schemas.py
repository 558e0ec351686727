"""Node input/output JSON Schemas: a bad schema is a validation problem naming the node's
field; a value that does not match names its JSON path and the reason."""

from __future__ import annotations

from graph_core.model import Graph, Node
from graph_core.schemas import schema_problem, violation
from graph_core.validation import validate

SCHEMA = {
    "type": "object",
    "required": ["severity"],
    "properties": {"severity": {"enum": ["low", "high"]}, "tags": {"type": "array"}},
}


def test_violations_name_the_path_and_the_reason() -> None:
    assert violation(SCHEMA, {"severity": "low"}) is None
    assert (
        violation(SCHEMA, {"severity": "mid"}) == "$.severity: 'mid' is not one of ['low', 'high']"
    )
    assert violation(SCHEMA, {}) == "$: 'severity' is a required property"
    two = violation(SCHEMA, {"severity": 1, "tags": "x"})
    assert two is not None and two.endswith("(and 1 more)")


def test_a_bad_schema_is_a_validation_problem() -> None:
    assert schema_problem(SCHEMA) is None
    assert schema_problem([1]) == "a schema is a JSON object, got list"
    reason = schema_problem({"type": "frobnicate"})
    assert reason is not None and "not a valid JSON Schema at $.type" in reason
    g = Graph(id="s").add_nodes(
        Node("start", type="start"),
        Node("a", type="agent", output_schema={"type": 12}, input_schema=SCHEMA),
        Node("end", type="end"),
    )
    doc = g.connect("start", "a", "end").to_dict()
    problems = validate(doc)
    assert [(p.code, p.path) for p in problems] == [("bad_schema", "nodes[1].output_schema")]
    assert "node 'a'" in problems[0].message
