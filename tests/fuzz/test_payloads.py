"""Fuzzed manual-invoke payloads (`chalice invoke -n start_drill ...`): every bad one is refused with the
field and its fix, before a single AWS call is made.

The field rules below are written independently of the pydantic models (from the handlers' docstrings
and the fixes they print), so a model that accepts or refuses the wrong thing disagrees with them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from chalice.test import Client
from hypothesis import event, given
from hypothesis import strategies as st

from chalicelib.aws import ClientFactory
from chalicelib.handlers.payloads import (
    ExecutionPayload,
    StartDrillPayload,
    StartFailbackPayload,
    StartRecoveryPayload,
    parse_payload,
)
from tests.fuzz.junk import fuzz_settings, json_values, mutated, non_objects, non_strings, recording, strings

# What pydantic's str_strip_whitespace removes: Unicode White_Space (Rust's str::trim), which is not quite
# Python's str.strip() (that also strips the ASCII separators \x1c-\x1f).
WHITE_SPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a" \
    "\u2028\u2029\u202f\u205f\u3000"


def stripped(value: str) -> str:
    return value.strip(WHITE_SPACE)


def _pattern(regex: str) -> Callable[[str], bool]:
    compiled = re.compile(regex, re.ASCII)
    return lambda value: compiled.fullmatch(value) is not None


def _length(low: int, high: int) -> Callable[[str], bool]:
    return lambda value: low <= len(value) <= high


@dataclass(frozen=True)
class FieldRule:
    required: bool
    nullable: bool  # null accepted (means "leave it out")
    valid: Callable[[str], bool]  # on the whitespace-stripped string
    fix: str  # what the refusal must tell the operator
    likely: st.SearchStrategy[str]  # values that are mostly valid, to exercise the accepting side


DRILL_RE = r"[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?"
INCIDENT_RE = r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}"
EXECUTION_RE = r"(?:rec|drill|fb|rb)-[A-Za-z0-9._:-]{1,200}"


def _padded(core: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    pad = st.text(alphabet=WHITE_SPACE + "\x1c\x1f\u200b", max_size=2)
    return st.builds(lambda left, mid, right: left + mid + right, pad, core, pad)


DRILL_ID = FieldRule(False, True, _pattern(DRILL_RE), "use 1-32 lowercase letters, digits and dashes",
                     _padded(st.from_regex(DRILL_RE, fullmatch=True)))
REASON = FieldRule(True, False, _length(3, 500), "say why", _padded(st.text(min_size=1, max_size=8)))
INCIDENT_ID = FieldRule(False, True, _pattern(INCIDENT_RE), "leave incident_id out",
                        _padded(st.from_regex(INCIDENT_RE, fullmatch=True)))
FAILBACK_REASON = FieldRule(False, False, _length(0, 500), "at most 500 characters",
                            _padded(st.text(max_size=8)))
EXECUTION_ID = FieldRule(True, False, _pattern(EXECUTION_RE), "jams-dr status",
                         _padded(st.from_regex(EXECUTION_RE, fullmatch=True)))


@dataclass(frozen=True)
class Function:
    model: Any
    base: dict[str, Any]  # a valid payload
    rules: dict[str, FieldRule]


_EXECUTION = {"execution_id": EXECUTION_ID}
FUNCTIONS: dict[str, Function] = {
    "start_drill": Function(StartDrillPayload, {"drill_id": "game-day"}, {"drill_id": DRILL_ID}),
    "start_recovery": Function(StartRecoveryPayload, {"reason": "us-east-1 unreachable", "incident_id": "inc-1"},
                               {"reason": REASON, "incident_id": INCIDENT_ID}),
    "start_failback": Function(StartFailbackPayload, {"reason": "primary healthy again"}, {"reason": FAILBACK_REASON}),
    **{name: Function(ExecutionPayload, {"execution_id": "rec-inc-1"}, _EXECUTION)
       for name in ("approve_recovery", "retry_execution", "rollback_execution", "advance_execution")},
}


def acceptable(function: str, payload: Any) -> bool:
    """The oracle: would a careful reader of the docs expect this payload to be accepted?"""
    rules = FUNCTIONS[function].rules
    payload = {} if payload is None else payload
    if not isinstance(payload, dict) or set(payload) - set(rules):
        return False
    for name, rule in rules.items():
        if name not in payload:
            if rule.required:
                return False
            continue
        value = payload[name]
        if value is None and rule.nullable:
            continue
        if not isinstance(value, str) or _surrogates(value) or not rule.valid(stripped(value)):
            return False
    return True


def test_the_rules_accept_the_valid_base_payloads() -> None:
    # Guards the oracle itself: the rules must not refuse what the handler tests start with.
    for name, function in FUNCTIONS.items():
        assert acceptable(name, function.base), name
        assert not isinstance(parse_payload(function.model, function.base, name), dict), name


# ------------------------------------------------------------------------------------------ strategies


def bad_value(rule: FieldRule) -> st.SearchStrategy[Any]:
    wrong_type = non_strings().filter(lambda v: not (v is None and rule.nullable))
    wrong_text = strings().filter(lambda s: _surrogates(s) or not rule.valid(stripped(s)))
    return st.one_of(wrong_type, wrong_text)


@st.composite
def bad_payloads(draw: st.DrawFn) -> tuple[str, Any, list[str]]:
    """(function, payload, fragments the refusal must contain): invalid by construction."""
    name = draw(st.sampled_from(sorted(FUNCTIONS)))
    function = FUNCTIONS[name]
    if draw(st.integers(0, 5)) == 0:
        return name, draw(non_objects()), ["the payload must be a JSON object"]
    payload = dict(function.base)
    expected: list[str] = []
    for _ in range(draw(st.integers(1, 3))):
        kinds = ["unknown", "bad-value"] + (["missing"] if any(r.required for r in function.rules.values()) else [])
        kind = draw(st.sampled_from(kinds))
        if kind == "unknown":
            key = draw(strings().filter(lambda k: k not in function.rules))
            payload[key] = draw(json_values(max_leaves=4))
            expected.append("a field name is not valid Unicode text" if _surrogates(key)
                            else f"field {key!r} is not accepted; remove it (allowed: ")
            continue
        field = draw(st.sampled_from(sorted(function.rules)))
        rule = function.rules[field]
        if kind == "missing" and rule.required:
            payload.pop(field, None)
            expected += [f"field {field!r}: Field required", rule.fix]
        else:
            payload[field] = draw(bad_value(rule))
            expected += [f"field {field!r}: ", rule.fix]
    assert not acceptable(name, payload)  # every mutation above makes the payload invalid
    return name, payload, [e for e in expected if not _undone(e, payload)]


def _surrogates(text: str) -> bool:
    """Lone surrogates (json.loads makes them from "\\ud800"): not text, so the key cannot be echoed."""
    return any("\ud800" <= c <= "\udfff" for c in text)


def _undone(fragment: str, payload: dict[str, Any]) -> bool:
    """A 'missing' expectation whose field a later mutation put back."""
    match = re.match(r"field '(\w+)': Field required", fragment)
    return match is not None and match.group(1) in payload


def near_valid_payloads(name: str) -> st.SearchStrategy[Any]:
    """Payloads close to valid (so both answers occur): mutated bases and rule fields with any strings."""
    function = FUNCTIONS[name]
    fields = {key: st.one_of(st.none(), strings(), rule.likely, st.just("why not\ud800"))
              for key, rule in function.rules.items()}
    return st.one_of(
        mutated(function.base).map(lambda pair: pair[0]),
        st.fixed_dictionaries({}, optional=fields),
        st.fixed_dictionaries({}, optional={key: rule.likely for key, rule in function.rules.items()}),
        json_values(),
    )


# ------------------------------------------------------------------------------------------ tests


@fuzz_settings(150)
@given(data=st.data(), name=st.sampled_from(sorted(FUNCTIONS)))
def test_payloads_are_accepted_exactly_when_the_documented_rules_allow_them(data: st.DataObject, name: str) -> None:
    function = FUNCTIONS[name]
    payload = data.draw(near_valid_payloads(name), label="payload")

    result = parse_payload(function.model, payload, name)

    event("accepted" if acceptable(name, payload) else "refused")
    if acceptable(name, payload):
        assert not isinstance(result, dict), result
        for key, rule in function.rules.items():
            value = (payload or {}).get(key)
            if isinstance(value, str):
                assert getattr(result, key) == stripped(value)
            elif key in (payload or {}) and rule.nullable:
                assert getattr(result, key) is None
    else:
        assert isinstance(result, dict), f"accepted {payload!r}"
        assert result["ok"] is False
        assert result["error"].startswith(f"{name}: bad input, nothing was started: ")


@fuzz_settings(120)
@given(case=bad_payloads())
def test_bad_payloads_are_refused_naming_the_field_and_fix_before_any_aws_call(
    case: tuple[str, Any, list[str]], dev_client: Client, dev_ledger: str, fuzz_clients: ClientFactory
) -> None:
    name, payload, expected = case

    with recording(fuzz_clients) as recorder:
        answer = dev_client.lambda_.invoke(name, payload).payload

    assert isinstance(answer, dict) and answer.get("ok") is False, answer
    error = answer["error"]
    assert error.startswith(f"{name}: bad input, nothing was started: ")
    for fragment in expected:
        assert fragment in error
    # Nothing at all reached AWS: not a read, let alone a write or a Lambda invoke.
    assert recorder.calls == [], [str(c) for c in recorder.calls]


def test_an_unreadable_field_name_does_not_hide_the_other_problems() -> None:
    """pydantic reports only the lone-surrogate key when one is present; the '' key must be named too
    (the case hypothesis found in a full run)."""
    from chalicelib.handlers.payloads import ExecutionPayload, parse_payload

    answer = parse_payload(ExecutionPayload, {"execution_id": "rec-inc-1", "": None, "\ud800": None},
                           "advance_execution")
    assert isinstance(answer, dict) and answer["ok"] is False
    assert "a field name is not valid Unicode text" in answer["error"]
    assert "field '' is not accepted; remove it (allowed: execution_id)" in answer["error"]
