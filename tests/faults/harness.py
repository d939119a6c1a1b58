"""Fault injection at botocore's HTTP layer, per call site, with botocore's real retry logic running.

A call site is (flow, phase, where, region, service, operation):
- ``phase``: the workflow state whose step or bookkeeping made the call (``engine`` for claims), the
  snapshot tick's stage, or ``-`` for the watcher;
- ``where``: the two innermost jams-dr frames with their line numbers (``caller:line > callee:line``),
  so two calls of one helper from different places are two sites.
Sites are discovered by a clean recording run of each flow (``Injector.seen``); nothing is hard-coded,
so a call site added later is covered automatically.

Faults:
- throttling and 5xx: a ``before-send`` hook answers with the error the service really sends (status,
  code, body in the service's own protocol: query, ec2, json, rest-json, rest-xml, rpc-v2-cbor);
- connection: the same hook raises ``EndpointConnectionError``, as a dead endpoint does;
- crash: an ``after-call`` hook raises ``Crash`` (a BaseException) once AWS answered: the Lambda died
  between AWS doing the work and jams-dr recording it.
Transient plans fail the first attempt of the first call at each site (botocore's retries must absorb
it); persistent plans fail every attempt at one site until disarmed.

``fast_retries`` makes botocore's retry back-off sleeps instant (recorded) and keeps the retry quota
full, as in a fresh Lambda container; the retry decisions stay botocore's.
"""

from __future__ import annotations

import hashlib
import sys
import threading
import types
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from types import FrameType
from typing import Any

import boto3
import botocore.endpoint
import botocore.retries.quota
from botocore.awsrequest import AWSResponse
from botocore.exceptions import EndpointConnectionError

from chalicelib.aws import ClientFactory
from jamsdr.faults import RawBody, expected_error, forged_error


class Kind(StrEnum):
    THROTTLE = "throttle"
    SERVER = "5xx"
    CONNECTION = "connection"
    CRASH = "crash"


TRANSPORT_KINDS: tuple[Kind, ...] = (Kind.THROTTLE, Kind.SERVER, Kind.CONNECTION)


class Crash(BaseException):
    """The Lambda died right after AWS answered a call (a BaseException: jams-dr must not catch it)."""


class Runaway(BaseException):
    """A flow made far more calls than any run needs (e.g. polling a stack moto left half-made for the
    36 h budget): stop the test with what it was doing, rather than let it run for minutes."""


@dataclass(frozen=True, order=True)
class Site:
    flow: str
    phase: str
    where: str
    region: str
    service: str
    operation: str

    @property
    def label(self) -> str:
        return f"{self.flow}/{self.phase} {self.service}.{self.operation}@{self.region} [{self.where}]"

    @property
    def key(self) -> str:
        """Stable across line-number edits: for messages and the summary's site count."""
        return f"{self.flow}/{self.phase}/{self.service}.{self.operation}@{self.region}"


# --------------------------------------------------------------------------- forged answers

# Forged answers are the embedded AWS's own (jamsdr.faults: forged_error, expected_error); a Kind is a str
# equal to the error's name there.

# --------------------------------------------------------------------------- plans


@dataclass
class Plan:
    """What to inject: ``kind`` at ``sites`` (None: every site), once per site or on every attempt."""

    kind: Kind
    sites: frozenset[Site] | None = None
    persistent: bool = False
    spent: set[Site] = field(default_factory=set)

    def covers(self, site: Site) -> bool:
        return self.sites is None or site in self.sites


@dataclass
class _Call:
    site: Site
    protocol: str
    attempts: int = 0
    faulted: int = 0
    fault: Kind | None = None


# moto's answers to ValidateTemplate by request body, for the whole process (see Injector._replay).
_VALIDATED: dict[bytes, tuple[int, dict[str, str], bytes]] = {}

_PHASE_OF_STEP = "_Runner._step"
_PHASE_OF_TURN = "_Runner._turn"
_PHASE_OF_TICK = "_Tick.guarded"


def _short(module: str) -> str:
    return module.removeprefix("chalicelib.").removeprefix("workflow.")


class Injector:
    """Records call sites and injects faults into every client of the factories it made."""

    def __init__(self, endpoint: str, regions: Mapping[str, str], session: boto3.session.Session) -> None:
        self.endpoint = endpoint
        self.regions = dict(regions)  # region name -> "primary" | "recovery"
        self.session = session
        self.flow: str | None = None
        self.seen: Counter[Site] = Counter()
        self.order: list[Site] = []
        self.faulted: Counter[tuple[Site, Kind]] = Counter()
        self.delivered: Counter[tuple[Site, Kind]] = Counter()
        self.crashed: list[Site] = []
        self.problems: list[str] = []
        self.plan: Plan | None = None
        self._local = threading.local()
        self._lock = threading.Lock()
        self._factory: ClientFactory | None = None
        self.call_budget: int | None = None

    # -- wiring ---------------------------------------------------------------------------

    def factory(self) -> ClientFactory:
        """The injector's factory (production retry settings: 4 attempts), made once with its hooks."""
        if self._factory is None:
            made = ClientFactory(session=self.session, endpoint_url=self.endpoint)
            made.register_hook("before-call", self._before_call)
            made.register_hook("before-send", self._before_send)
            made.register_hook("response-received", self._response_received)
            made.register_hook("after-call", self._after_call)
            made.register_hook("after-call-error", self._after_call_error)
            self._factory = made
        return self._factory

    @contextmanager
    def recording(self, flow: str) -> Iterator[None]:
        """Calls made inside the block belong to ``flow`` (calls outside are the harness's own)."""
        previous, self.flow = self.flow, flow
        try:
            yield
        finally:
            self.flow = previous

    @contextmanager
    def armed(self, plan: Plan) -> Iterator[Plan]:
        previous, self.plan = self.plan, plan
        try:
            yield plan
        finally:
            self.plan = previous

    def sites(self, flow: str) -> list[Site]:
        return [s for s in self.order if s.flow == flow]

    def reset_counts(self) -> None:
        """Forget what was seen and injected (a new discovery starts from here)."""
        self.order.clear()
        self.seen.clear()
        self.faulted.clear()
        self.delivered.clear()
        self.crashed.clear()

    # -- hooks ----------------------------------------------------------------------------

    def _site(self, model: Any, context: Mapping[str, Any]) -> Site:
        frames: list[str] = []
        phase: str | None = None
        in_turn = False
        frame: FrameType | None = sys._getframe(2)
        while frame is not None:
            module = str(frame.f_globals.get("__name__", ""))
            if module.startswith("chalicelib.") and module != "chalicelib.aws":
                qualname = frame.f_code.co_qualname
                if len(frames) < 2:
                    frames.append(f"{_short(module)}.{qualname}:{frame.f_lineno}")
                if phase is None and qualname == _PHASE_OF_STEP:
                    execution = frame.f_locals.get("execution")
                    phase = str(getattr(execution, "state", "?"))
                elif phase is None and qualname == _PHASE_OF_TICK:
                    phase = str(frame.f_locals.get("stage", "?"))
                elif qualname == _PHASE_OF_TURN:
                    in_turn = True
            frame = frame.f_back
        if phase is None:
            phase = "engine" if in_turn else "-"
        region = self.regions.get(str(context.get("client_region")), str(context.get("client_region")))
        return Site(
            flow=self.flow or "?",
            phase=phase,
            where=" > ".join(reversed(frames)) or "?",
            region=region,
            service=model.service_model.service_name,
            operation=model.name,
        )

    def _before_call(self, model: Any, context: Mapping[str, Any], **_: Any) -> None:
        if self.flow is None:
            self._local.call = None
            return
        site = self._site(model, context)
        if self.call_budget is not None:
            self.call_budget -= 1
            if self.call_budget < 0:
                self.call_budget = None
                raise Runaway(f"call budget spent; last call: {site.label}")
        self._local.call = _Call(site, model.service_model.resolved_protocol)
        with self._lock:
            if site not in self.seen:
                self.order.append(site)
            self.seen[site] += 1

    def _choose(self, call: _Call) -> Kind | None:
        plan = self.plan
        if plan is None or plan.kind is Kind.CRASH or not plan.covers(call.site):
            return None
        if plan.persistent:
            return plan.kind
        if call.attempts == 1 and call.site not in plan.spent:
            plan.spent.add(call.site)
            return plan.kind
        return None

    def _before_send(self, request: Any, event_name: str, **_: Any) -> AWSResponse | None:
        call: _Call | None = getattr(self._local, "call", None)
        if call is not None:
            call.attempts += 1
            kind = self._choose(call)
            call.fault = kind
            if kind is not None:
                call.faulted += 1
                with self._lock:
                    self.faulted[(call.site, kind)] += 1
                if kind is Kind.CONNECTION:
                    raise EndpointConnectionError(endpoint_url=request.url)
                return forged_error(request.url, call.site.service, call.protocol, kind)
        if event_name.endswith(".ValidateTemplate"):
            return self._replay(request)
        return None

    def _replay(self, request: Any) -> AWSResponse | None:
        """moto validates templates with cfn-lint (seconds per call): replay its answer for the same body."""
        body = request.body or b""
        key = hashlib.sha256(body.encode() if isinstance(body, str) else bytes(body)).digest()
        self._local.validate_key = key
        known = _VALIDATED.get(key)
        if known is None:
            return None
        status, headers, body = known
        return AWSResponse(request.url, status, headers, RawBody(body))

    def _response_received(
        self, response_dict: Mapping[str, Any] | None = None, parsed_response: Mapping[str, Any] | None = None,
        exception: BaseException | None = None, **kwargs: Any,
    ) -> None:
        call: _Call | None = getattr(self._local, "call", None)
        key = getattr(self._local, "validate_key", None)
        if key is not None and response_dict is not None and response_dict.get("status_code") == 200:
            body = response_dict.get("body")
            if isinstance(body, bytes):
                _VALIDATED[key] = (200, dict(response_dict.get("headers", {})), body)
            self._local.validate_key = None
        if call is None or call.fault is None:
            return
        kind, call.fault = call.fault, None
        if kind is Kind.CONNECTION:
            ok = isinstance(exception, EndpointConnectionError)
            got = type(exception).__name__
        else:
            got = str((parsed_response or {}).get("Error", {}).get("Code"))
            ok = got == expected_error(call.site.service, kind)[1]
        with self._lock:
            if ok:
                self.delivered[(call.site, kind)] += 1
            else:
                self.problems.append(f"{call.site.label}: injected {kind.value} arrived as {got!r}")

    def _after_call(self, http_response: Any, model: Any, **_: Any) -> None:
        call: _Call | None = getattr(self._local, "call", None)
        self._local.call = None
        plan = self.plan
        if call is None or plan is None or plan.kind is not Kind.CRASH:
            return
        # After any answer, an error too (describe_stack's "does not exist" is an answer the step uses).
        if not plan.covers(call.site):
            return
        if call.site in plan.spent:
            return
        plan.spent.add(call.site)
        self.crashed.append(call.site)
        raise Crash(call.site.label)

    def _after_call_error(self, **_: Any) -> None:
        self._local.call = None


# --------------------------------------------------------------------------- retries without waiting


@contextmanager
def fast_retries() -> Iterator[list[float]]:
    """botocore's retries, without waiting and without running out of retry quota.

    botocore sleeps between attempts with ``time.sleep`` of its endpoint module: the sleeps are
    recorded instead. Its standard retry mode also keeps a quota per client (500 tokens, 5 per retry,
    10 per connection error): a fresh Lambda container starts with a full one, and no single case
    spends it, so the quota never refuses a retry here, whichever factory a case's clients come from.
    Which errors are retried, how many attempts and the back-off computed stay botocore's own.
    """
    slept: list[float] = []
    original_time = botocore.endpoint.time
    original_acquire = botocore.retries.quota.RetryQuota.acquire
    botocore.endpoint.time = types.SimpleNamespace(sleep=slept.append)
    botocore.retries.quota.RetryQuota.acquire = lambda self, amount: True
    try:
        yield slept
    finally:
        botocore.endpoint.time = original_time
        botocore.retries.quota.RetryQuota.acquire = original_acquire


# --------------------------------------------------------------------------- cases and outcomes


class Outcome(StrEnum):
    COMPLETED = "completed after retries"
    RESUMED = "failed cleanly and resumed"
    LOST = "lost"
    DUPLICATED = "duplicated"
    UNEXPECTED = "unexpected"


@dataclass(frozen=True)
class Case:
    flow: str
    site: Site
    kind: Kind
    mode: str  # transient | persistent | crash
    outcome: Outcome
    detail: str = ""

    def as_dict(self) -> dict[str, str]:
        return {"flow": self.flow, "site": self.site.label, "key": self.site.key, "kind": self.kind.value,
                "mode": self.mode, "outcome": self.outcome.value, "detail": self.detail}


@dataclass
class Tally:
    """The cases of one test; ``check`` fails the test on any bad outcome or missing coverage."""

    flow: str
    cases: list[Case] = field(default_factory=list)

    def add(self, case: Case) -> None:
        self.cases.append(case)

    def extend(self, cases: Iterable[Case]) -> None:
        self.cases.extend(cases)

    def bad(self) -> list[Case]:
        return [c for c in self.cases if c.outcome not in (Outcome.COMPLETED, Outcome.RESUMED)]

    def covered(self, kind: Kind) -> set[Site]:
        return {c.site for c in self.cases if c.kind is kind}

    def missing(self, sites: Iterable[Site], kinds: Iterable[Kind]) -> list[str]:
        return [f"{kind.value} {site.label}" for kind in kinds for site in sites if site not in self.covered(kind)]

    def records(self) -> list[dict[str, str]]:
        return [c.as_dict() for c in self.cases]


# ------------------------------------------------------------------------------ the summary

CASES_PROPERTY = "fault_cases"  # the user property a fault test hands its cases to the summary with


def summary_line(cases: list[dict[str, str]]) -> str:
    flows = Counter(c["flow"] for c in cases)
    kinds = Counter(c["kind"] for c in cases)
    outcomes = Counter(c["outcome"] for c in cases)
    sites = len({c["site"] for c in cases})
    resumed = outcomes[Outcome.RESUMED.value]
    flow_text = ", ".join(f"{name} {count}" for name, count in sorted(flows.items()))
    kind_text = ", ".join(f"{name} {count}" for name, count in sorted(kinds.items()))
    return (
        f"fault injection: {len(cases)} cases over {sites} call sites ({flow_text}; {kind_text}); "
        f"completed after retries {outcomes[Outcome.COMPLETED.value]}, failed cleanly {resumed} and resumed "
        f"{resumed}, lost {outcomes[Outcome.LOST.value]}, duplicated {outcomes[Outcome.DUPLICATED.value]}, "
        f"unexpected {outcomes[Outcome.UNEXPECTED.value]}"
    )
