"""What every fuzz test shares: hypothesis settings, junk strategies, JSON mutations, the AWS call recorder.

The recorder is a botocore ``before-parameter-build`` hook on the ClientFactory the handlers use: it
sees every API call with its parameters before anything is serialized or sent, so "nothing was created" is asserted on the calls themselves
(stricter and cheaper than an inventory of resources before and after).
"""

from __future__ import annotations

import copy
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st

from chalicelib.aws import ClientFactory


def fuzz_settings(max_examples: int) -> settings:
    """Deterministic (CI replays the same examples), no deadline (moto calls vary), bounded size.

    The function_scoped_fixture health check is suppressed because tests/conftest.py's autouse fixture
    (a per-test settings cache reset) is function-scoped; every test here resets what it relies on per
    example itself, and shares the moto world on purpose (built once per module).
    """
    return settings(
        max_examples=max_examples, deadline=None, derandomize=True, database=None,
        # No explain phase: it reruns a failing example dozens of times against moto (a minute) only to
        # list covered lines; the shrunk example is what a failure needs.
        phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )


# ------------------------------------------------------------------------------------------ junk

# Strings that have broken parsers before: control characters, bidi overrides, combining marks,
# lone surrogates (json.loads produces them from "\ud800"), non-ASCII digits and whitespace.
NASTY_STRINGS = (
    "", " ", "\n", "\t", "\x00", "\x1c", "\u00a0", "\u3000", "\u202e", "e\u0301", "\ud800", "\udfff",
    "🚀", "\u0661\u0662\u0663", "\uff13", "null", "None", "true", "0", "-1", "1e309", "NaN", "{}", "[]", "'", '"', "\\",
    "%s%s%s", "${jndi:x}", "../../etc/passwd", "<script>",
)


def huge_strings() -> st.SearchStrategy[str]:
    # Built from a size, not drawn character by character: hypothesis caps drawn text far lower.
    return st.builds(lambda n, c: c * n, st.integers(501, 10_000), st.sampled_from("aZ9-é🚀 \x00"))


def strings() -> st.SearchStrategy[str]:
    return st.one_of(st.text(max_size=40), st.sampled_from(NASTY_STRINGS), huge_strings())


def numbers() -> st.SearchStrategy[int | float]:
    return st.one_of(
        st.integers(), st.integers(min_value=-(10**30), max_value=10**30),
        st.floats(allow_nan=True, allow_infinity=True),
        st.sampled_from([0, -1, 2**63, -(2**63), float("nan"), float("inf"), -0.0]),
    )


def scalars() -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), st.booleans(), numbers(), strings())


def json_values(max_leaves: int = 10) -> st.SearchStrategy[Any]:
    """Anything a JSON document can hold (plus NaN/Infinity, which Python's json.loads accepts)."""
    return st.recursive(
        scalars(),
        lambda kids: st.one_of(
            st.lists(kids, max_size=4),
            st.dictionaries(st.one_of(st.text(max_size=12), st.sampled_from(NASTY_STRINGS)), kids, max_size=4),
        ),
        max_leaves=max_leaves,
    )


def _objects() -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(st.text(max_size=12), json_values(max_leaves=4), max_size=4)


def non_objects() -> st.SearchStrategy[Any]:
    """JSON values that are not objects (null excluded: chalice's test client turns it into {})."""
    return st.one_of(st.booleans(), numbers(), strings(), st.lists(json_values(max_leaves=4), max_size=4))


def non_strings() -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), st.booleans(), numbers(), st.lists(json_values(max_leaves=4), max_size=4),
                     _objects())


# ------------------------------------------------------------------------------------------ mutations


def paths(doc: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every path to a value inside ``doc`` (keys of objects, indexes of arrays)."""
    if isinstance(doc, dict):
        for key, value in doc.items():
            yield (*prefix, key)
            yield from paths(value, (*prefix, key))
    elif isinstance(doc, list):
        for index, value in enumerate(doc):
            yield (*prefix, index)
            yield from paths(value, (*prefix, index))


def parent_of(doc: Any, path: tuple[Any, ...]) -> Any:
    node = doc
    for part in path[:-1]:
        node = node[part]
    return node


@dataclass(frozen=True)
class Mutation:
    kind: str  # "replace" | "delete" | "add" | "stretch"
    path: tuple[Any, ...]

    def __str__(self) -> str:
        return f"{self.kind} {'.'.join(map(str, self.path)) or '(root)'}"


@st.composite
def mutated(draw: st.DrawFn, base: dict[str, Any], *, keep: frozenset[str] = frozenset()) -> tuple[Any, list[Mutation]]:
    """``base`` with 1-3 random changes: a value replaced by junk, a key deleted, an unknown key added,
    a string stretched (kept as its prefix, so it stays plausible, but far too long).

    ``keep``: top-level keys never deleted (chalice itself needs the EventBridge envelope's keys).
    """
    doc = copy.deepcopy(base)
    done: list[Mutation] = []
    for _ in range(draw(st.integers(1, 3))):
        candidates = sorted(paths(doc), key=repr)
        kind = draw(st.sampled_from(["replace", "delete", "add", "stretch"]))
        texts = [p for p in candidates if isinstance(value_at(doc, p), str)]
        if kind == "stretch" and texts:
            stretch: tuple[Any, ...] = draw(st.sampled_from(texts))
            parent_of(doc, stretch)[stretch[-1]] += draw(huge_strings())
            done.append(Mutation("stretch", stretch))
            continue
        if kind == "add" or not candidates:
            targets = [p for p in candidates if isinstance(value_at(doc, p), dict)]
            where: tuple[Any, ...] = draw(st.sampled_from([(), *targets]))
            key = draw(st.one_of(st.text(max_size=12), st.sampled_from(NASTY_STRINGS)))
            value_at(doc, where)[key] = draw(json_values(max_leaves=4))
            done.append(Mutation("add", (*where, key)))
            continue
        path: tuple[Any, ...] = draw(st.sampled_from(candidates))
        parent = parent_of(doc, path)
        if kind == "delete" and not (len(path) == 1 and path[0] in keep):
            del parent[path[-1]]
            done.append(Mutation("delete", path))
        else:
            parent[path[-1]] = draw(json_values(max_leaves=4))
            done.append(Mutation("replace", path))
    return doc, done


def value_at(doc: Any, path: tuple[Any, ...]) -> Any:
    node = doc
    for part in path:
        node = node[part]
    return node


# ------------------------------------------------------------------------------------------ recorder

# Operation names that change something in AWS (Invoke: a Lambda started is a workflow started).
MUTATING = re.compile(
    r"^(Create|Copy|Put|Update|Delete|Invoke|Start|Stop|Restore|Modify|Terminate|Reboot|Change|BatchWrite|"
    r"TransactWrite|Tag|Untag|Set|Attach|Detach|Associate|Disassociate|Register|Deregister|Promote|Failover)"
)


@dataclass(frozen=True)
class Call:
    service: str
    operation: str
    region: str
    params: dict[str, Any]

    @property
    def mutating(self) -> bool:
        return bool(MUTATING.match(self.operation))

    def __str__(self) -> str:
        return f"{self.service}.{self.operation} in {self.region}"


class Recorder:
    """Every AWS call made through a ClientFactory while recording (thread-safe)."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self._lock = threading.Lock()

    def __call__(self, *, model: Any, params: Any, context: Any = None, **_: Any) -> None:
        region = str((context or {}).get("client_region", "?"))
        call = Call(model.service_model.service_name, model.name, region, dict(params or {}))
        with self._lock:
            self.calls.append(call)

    def clear(self) -> None:
        with self._lock:
            self.calls.clear()

    @property
    def mutating(self) -> list[Call]:
        return [c for c in self.calls if c.mutating]


@contextmanager
def recording(clients: ClientFactory) -> Iterator[Recorder]:
    recorder = Recorder()
    # before-call would give the serialized HTTP request; this event gives the API parameters.
    clients.register_hook("before-parameter-build", recorder)
    try:
        yield recorder
    finally:
        clients.unregister_hook("before-parameter-build", recorder)
