"""Templates: raw passthrough, interpolation, defaults, nesting, errors, prefetch paths."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from graph_core.errors import RelaygraphError, TemplateError
from graph_core.sources import DictSource
from graph_core.templates import has_templates, render, template_paths

SRC = DictSource(
    {"title": "Checkout 500", "n": 3, "ok": True, "none": None, "tags": ["a", "b"]},
    {
        "triage": [
            {"severity": "low", "summary": "first look"},
            {"severity": "critical", "summary": "prod down", "meta": {"score": 9.5}},
        ]
    },
)


# --- raw passthrough ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{input.n}}", 3),
        ("{{input.ok}}", True),
        ("{{input.none}}", None),
        ("{{input.tags}}", ["a", "b"]),
        ("{{triage.output.meta}}", {"score": 9.5}),
        ("{{triage.output.meta.score}}", 9.5),
        ("  {{ input.n }}\n", 3),  # surrounding whitespace is allowed
        ("{{input.title}}", "Checkout 500"),
        ("{{triage.outputs.1.severity}}", "low"),
        (
            "{{triage.outputs.2}}",
            {"severity": "critical", "summary": "prod down", "meta": {"score": 9.5}},
        ),
        ("{{triage.visits}}", 2),
        ("{{never.visits}}", 0),
        ("{{input.tags.1}}", "b"),
    ],
)
def test_single_placeholder_passes_the_raw_value(template: str, expected: Any) -> None:
    got = render(template, SRC)
    assert got == expected
    assert type(got) is type(expected)


# --- interpolation --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("Bug: {{input.title}}", "Bug: Checkout 500"),
        ("{{input.title}} ({{triage.output.severity}})", "Checkout 500 (critical)"),
        ("{{input.n}}{{input.n}}", "33"),  # two placeholders are never a raw passthrough
        ("n={{input.n}}", "n=3"),
        ("ok={{input.ok}}", "ok=true"),
        ("none={{input.none}}", "none=null"),
        ("tags={{input.tags}}", 'tags=["a","b"]'),
        ("meta={{triage.output.meta}}", 'meta={"score":9.5}'),
        ("visit {{triage.visits}}: {{triage.outputs.1.summary}}", "visit 2: first look"),
        ("no placeholders }} here", "no placeholders }} here"),
        ("", ""),
    ],
)
def test_interpolation(template: str, expected: str) -> None:
    assert render(template, SRC) == expected


def test_strings_are_inserted_as_is() -> None:
    src = DictSource({"s": 'say "hi"\n'})
    assert render("<{{input.s}}>", src) == '<say "hi"\n>'


# --- defaults -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("literal", "expected"),
    [
        ('"x"', "x"),
        ('""', ""),
        ("0", 0),
        ("-2.5", -2.5),
        ("true", True),
        ("false", False),
        ("null", None),
        ("[]", []),
        ("{}", {}),
        ('[1, "two", null]', [1, "two", None]),
        ('{"a": {"b": []}}', {"a": {"b": []}}),
        ('"}}"', "}}"),
        ('"a)b"', "a)b"),
        ('"\\"quoted\\""', '"quoted"'),
    ],
)
def test_default_of_each_json_type(literal: str, expected: Any) -> None:
    assert render(f"{{{{input.absent | default({literal})}}}}", SRC) == expected
    assert render(f"{{{{never.output.x|default({literal})}}}}", SRC) == expected


def test_default_in_interpolation_is_json_encoded() -> None:
    assert render("v={{input.absent | default(null)}}", SRC) == "v=null"
    assert render("v={{input.absent | default([1])}}!", SRC) == "v=[1]!"
    assert render('v={{input.absent | default("s")}}', SRC) == "v=s"


def test_default_is_not_used_when_the_value_is_present() -> None:
    assert render("{{input.n | default(0)}}", SRC) == 3
    assert render('{{input.none | default("x")}}', SRC) is None  # null is a value


def test_whitespace_tolerance() -> None:
    assert render("{{  input.absent  |  default  ( 7 )  }}", SRC) == 7
    assert render("{{input.absent|default(7)}}", SRC) == 7


def test_rendered_defaults_are_fresh_objects() -> None:
    first = render("{{input.absent | default([])}}", SRC)
    first.append("mutated")
    assert render("{{input.absent | default([])}}", SRC) == []


# --- nesting --------------------------------------------------------------------------------


def test_render_recurses_into_values_not_keys() -> None:
    config = {
        "channel": "slack",
        "{{input.title}}": "key stays",
        "text": "{{triage.output.summary}}",
        "blocks": [{"n": "{{input.n}}"}, "{{input.tags}}", 7, None, ["{{input.ok}}"]],
        "retries": 3,
    }
    assert render(config, SRC) == {
        "channel": "slack",
        "{{input.title}}": "key stays",
        "text": "prod down",
        "blocks": [{"n": 3}, ["a", "b"], 7, None, [True]],
        "retries": 3,
    }


def test_render_does_not_mutate_its_input() -> None:
    config = {"a": ["{{input.n}}"]}
    render(config, SRC)
    assert config == {"a": ["{{input.n}}"]}


@pytest.mark.parametrize("value", [1, 2.5, True, None])
def test_non_containers_pass_through(value: Any) -> None:
    assert render(value, SRC) is value


# --- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "path", "reason_part"),
    [
        ("{{input.absent}}", "input.absent", "run input has no 'absent'"),
        ("x {{input.tags.5}} y", "input.tags.5", "'tags.5'"),
        ("{{never.output.x}}", "never.output.x", "node 'never' has no output yet"),
        ("{{triage.outputs.3.severity}}", "triage.outputs.3.severity", "no output for visit 3"),
        ("{{triage.output.meta.nope}}", "triage.output.meta.nope", "'meta.nope'"),
    ],
)
def test_missing_without_default_names_the_path(template: str, path: str, reason_part: str) -> None:
    with pytest.raises(TemplateError) as info:
        render({"outer": [template]}, SRC)
    err = info.value
    assert isinstance(err, RelaygraphError)
    assert err.path == path
    assert err.template == template
    assert reason_part in err.reason
    assert "default" in err.reason  # says how to make it optional
    assert f"{{{{{path}}}}}" in str(err)


@pytest.mark.parametrize(
    ("template", "reason_part"),
    [
        ("{{input.x", "unclosed"),
        ("a {{input.n}} b {{", "unclosed"),
        ("{{}}", "empty placeholder"),
        ("{{   }}", "empty placeholder"),
        ("{{input..x}}", "empty segment"),
        ("{{triage}}", "second segment"),
        ("{{triage.result}}", "unknown segment"),
        ("{{triage.outputs.0.x}}", "visit number"),
        ("{{input.x | upper}}", "unknown filter"),
        ("{{input.x | default}}", "malformed"),
        ("{{input.x | default(1}}", "malformed"),
        ("{{input.x | default()}}", "needs a JSON literal"),
        ("{{input.x | default(x)}}", "not a JSON literal"),
        ("{{input.x | default('single')}}", "not a JSON literal"),
        ("{{input.x | default(1) extra}}", "ending in ')'"),
        ("{{input.x | default(1, 2)}}", "not a JSON literal"),
        ("{{ | default(1)}}", "needs a path"),
    ],
)
def test_malformed_templates(template: str, reason_part: str) -> None:
    with pytest.raises(TemplateError) as info:
        render(template, SRC)
    assert reason_part in info.value.reason
    assert info.value.template == template


def test_malformed_placeholders_fail_even_with_data_present() -> None:
    with pytest.raises(TemplateError, match="unknown filter"):
        render("{{input.n | upper}}", SRC)


def test_non_json_values_fail_interpolation_clearly() -> None:
    src = DictSource({"obj": object()})
    assert isinstance(render("{{input.obj}}", src), object)  # raw passthrough is fine
    with pytest.raises(TemplateError, match="cannot be written as JSON"):
        render("x {{input.obj}}", src)


# --- template_paths and has_templates -------------------------------------------------------


def test_template_paths_lists_each_path_once_in_order() -> None:
    config = {
        "a": "{{input.title}} and {{triage.output.severity | default(null)}}",
        "b": ["{{input.title}}", {"c": "{{triage.outputs.2.meta}}"}, 3],
        "{{input.key}}": "keys are not templates",
        "d": "{{triage.visits}}",
    }
    assert list(template_paths(config)) == [
        "input.title",
        "triage.output.severity",
        "triage.outputs.2.meta",
        "triage.visits",
    ]


def test_template_paths_of_plain_values() -> None:
    assert list(template_paths({"a": "plain", "b": [1, None]})) == []
    assert list(template_paths(5)) == []


def test_template_paths_reports_malformed_templates() -> None:
    with pytest.raises(TemplateError):
        list(template_paths({"a": "{{input.x"}))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("{{input.x}}", True),
        ({"a": [1, {"b": "x {{a.output}}"}]}, True),
        ({"{{input.x}}": "key only"}, False),
        ({"a": ["plain", 1, None]}, False),
        ("}} {", False),
        (42, False),
    ],
)
def test_has_templates(value: Any, expected: bool) -> None:
    assert has_templates(value) is expected


# --- properties -----------------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=6),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)


@given(JSON_VALUES)
def test_lone_placeholder_and_default_return_the_value(value: Any) -> None:
    src = DictSource({"v": value})
    assert render("{{input.v}}", src) == value
    literal = orjson.dumps(value).decode()
    assert render(f"{{{{input.absent | default({literal})}}}}", src) == value


@given(JSON_VALUES)
def test_interpolation_writes_json_for_non_strings(value: Any) -> None:
    src = DictSource({"v": value})
    expected = value if isinstance(value, str) else orjson.dumps(value).decode()
    assert render("[{{input.v}}]", src) == f"[{expected}]"


@given(st.text(max_size=20).filter(lambda s: "{{" not in s))
def test_text_without_placeholders_is_unchanged(text: str) -> None:
    assert render(text, SRC) == text
    assert has_templates(text) is False
