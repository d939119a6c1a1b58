"""Injected AWS faults for the embedded world: chosen API calls in one region fail as AWS fails them.

A fault names a service, a region, an operation, an error and a count: the first ``count`` matching API
calls fail, each with every one of its attempts, so botocore's own retries run (back-off, retry quota,
``RetryAttempts``) and still lose, and the product gets the error it would get from AWS. Errors:

- ``throttle``: the service's own throttling answer (``Throttling`` 400 from query services,
  ``ThrottlingException`` 400 from JSON ones, ``RequestLimitExceeded`` 503 from EC2, ``SlowDown`` 503
  from S3...), which botocore's retry handler classifies as throttling;
- ``5xx``: the service failing as a whole (``ServiceUnavailable`` 503, ``InternalFailure``-like codes);
- ``connection``: ``EndpointConnectionError`` for the real endpoint URL, as a refused connection gives.

Besides faults, ``refuse_services`` makes every call of whole services refuse its connection whatever
region its client names: a global service whose control plane is in a region that is down (Route 53's
API, IAM and Organizations when us-east-1 is down; jamsdr/static_stability.py has the sources). Calls
made inside ``data_plane_emulation()`` stand in for a data plane (the embedded AWS computing a DNS answer
from Route 53's records) and are not refused.

Throttle and 5xx answers are forged on the wire in the service's own protocol (query, ec2, json,
rest-json, rest-xml, rpc-v2-cbor) and parsed by botocore's own parser: the exception, its class, code,
status and metadata are botocore's, not a hand-built ClientError.

How: a ``before-call`` hook decides, once per API call and under a lock, whether the call is one of the
first ``count`` matching calls, and marks that call's request context; a ``before-send`` hook fails
every attempt of a marked call. Counting at ``before-call`` is per call as the product makes it (a
``count: 1`` fault fails one Publish, not one attempt that botocore's retry would quietly absorb);
failing at ``before-send`` rather than answering at ``before-call`` is what keeps botocore's retries,
timing and parsing real. The mark travels in botocore's per-call request context (the same dict reaches
every attempt's request), so concurrent calls on many threads never see each other's decisions.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any, cast

import botocore.session
from botocore.awsrequest import AWSResponse
from botocore.exceptions import EndpointConnectionError, UnknownServiceError

from chalicelib.aws import ClientFactory
from chalicelib.clock import Clock, SystemClock, isoformat
from jamsdr.scenario import FAULT_ERRORS, ScenarioFault

THROTTLE, SERVER, CONNECTION = FAULT_ERRORS  # "throttle", "5xx", "connection"

# The CloudWatch reads a monitoring failure takes away; PutMetricData (the heartbeats) keeps working.
MONITORING_READS: tuple[str, ...] = ("GetMetricData", "GetMetricStatistics", "ListMetrics")

# --------------------------------------------------------------------------- forged answers

# What each service answers when it throttles or fails (status, error code), where it differs from the
# defaults below.
_THROTTLE: dict[str, tuple[int, str]] = {
    "ec2": (503, "RequestLimitExceeded"),
    "dynamodb": (400, "ThrottlingException"),
    "s3": (503, "SlowDown"),
    "lambda": (429, "TooManyRequestsException"),
    "ssm": (400, "ThrottlingException"),
}
_SERVER: dict[str, tuple[int, str]] = {
    "ec2": (503, "Unavailable"),
    "dynamodb": (500, "InternalServerError"),
    "s3": (500, "InternalError"),
    "lambda": (500, "ServiceException"),
    "ssm": (500, "InternalServerError"),
    "cloudwatch": (500, "InternalServiceError"),
}
_QUERY_THROTTLE = (400, "Throttling")
_JSON_THROTTLE = (400, "ThrottlingException")
_DEFAULT_SERVER = (503, "ServiceUnavailable")
_JSON_PROTOCOLS = frozenset({"json", "rest-json", "smithy-rpc-v2-cbor"})


@cache
def _json_error_codes(service: str) -> bool:
    """Whether ``service`` names its errors as JSON services do (``ThrottlingException``).

    Services moved from the query protocol to JSON (CloudWatch, SQS) declare ``awsQueryCompatible`` and
    keep their query codes (``Throttling``), whichever wire protocol botocore picks.
    """
    try:
        # A session of its own: botocore sessions are not thread-safe, and errors are forged on any thread.
        model = botocore.session.get_session().get_service_model(service)
    except UnknownServiceError:
        return False
    return model.resolved_protocol in _JSON_PROTOCOLS and "awsQueryCompatible" not in model.metadata


def expected_error(service: str, error: str) -> tuple[int, str]:
    """(HTTP status, error code) of ``service`` answering with ``error`` ("throttle" or "5xx")."""
    if error == THROTTLE:
        return _THROTTLE.get(service) or (_JSON_THROTTLE if _json_error_codes(service) else _QUERY_THROTTLE)
    if error == SERVER:
        return _SERVER.get(service, _DEFAULT_SERVER)
    raise ValueError(f"{error!r} has no HTTP answer; expected one of {THROTTLE}, {SERVER}")


class RawBody:
    """The raw body stream an AWSResponse reads from."""

    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._body


def _cbor_text(text: str) -> bytes:
    raw = text.encode()
    size = len(raw)
    if size < 24:
        return bytes([0x60 | size]) + raw
    if size < 256:
        return bytes([0x78, size]) + raw
    return bytes([0x79]) + size.to_bytes(2, "big") + raw


def _cbor_map(values: Mapping[str, str]) -> bytes:
    out = bytes([0xA0 | len(values)])
    for key, value in values.items():
        out += _cbor_text(key) + _cbor_text(value)
    return out


def forged_error(url: str, service: str, protocol: str, error: str) -> AWSResponse:
    """The HTTP answer of ``service`` throttling (or failing) in its own wire protocol."""
    status, code = expected_error(service, error)
    message = f"injected {error} fault"
    side = "Sender" if status < 500 else "Receiver"
    headers: dict[str, str] = {"x-amzn-requestid": "fault-injected"}
    if protocol == "query":
        body = (f"<ErrorResponse><Error><Type>{side}</Type><Code>{code}</Code><Message>{message}</Message>"
                "</Error><RequestId>fault-injected</RequestId></ErrorResponse>").encode()
        headers["content-type"] = "text/xml"
    elif protocol == "ec2":
        body = (f"<Response><Errors><Error><Code>{code}</Code><Message>{message}</Message></Error></Errors>"
                "<RequestID>fault-injected</RequestID></Response>").encode()
        headers["content-type"] = "text/xml"
    elif protocol == "json":
        body = json.dumps({"__type": f"com.amazonaws.{service}#{code}", "message": message}).encode()
        headers["content-type"] = "application/x-amz-json-1.0"
    elif protocol == "rest-json":
        body = json.dumps({"message": message}).encode()
        headers.update({"content-type": "application/json", "x-amzn-errortype": code})
    elif protocol == "rest-xml":
        if service == "s3":
            body = f"<Error><Code>{code}</Code><Message>{message}</Message></Error>".encode()
        else:
            body = (f"<ErrorResponse><Error><Type>{side}</Type><Code>{code}</Code><Message>{message}</Message>"
                    "</Error><RequestId>fault-injected</RequestId></ErrorResponse>").encode()
        headers["content-type"] = "application/xml"
    elif protocol == "smithy-rpc-v2-cbor":
        body = _cbor_map({"__type": f"com.amazonaws.{service}#{code}", "message": message})
        headers.update({"content-type": "application/cbor", "smithy-protocol": "rpc-v2-cbor"})
    else:
        raise ValueError(f"no forged error for protocol {protocol!r} ({service})")
    return AWSResponse(url, status, cast(Any, headers), RawBody(body))  # a plain dict is what botocore wraps


# --------------------------------------------------------------------------- faults and the injector


@dataclass(frozen=True)
class Fault:
    """Calls of ``service``'s ``operation`` in ``region`` (a region name) fail with ``error``.

    ``count``: how many calls fail (each with all its attempts); None: every call until cleared.
    """

    service: str
    region: str
    operation: str
    error: str
    count: int | None = None

    def __post_init__(self) -> None:
        if self.error not in FAULT_ERRORS:
            raise ValueError(f"fault error {self.error!r}: expected one of {', '.join(FAULT_ERRORS)}")
        if self.count is not None and self.count < 1:
            raise ValueError(f"fault count {self.count}: expected at least 1 (None: unlimited)")


@dataclass(frozen=True)
class InjectedFault:
    """One API call that an armed fault made fail (``at``: when the call was made)."""

    service: str
    region: str
    operation: str
    error: str
    at: datetime

    def to_dict(self) -> dict[str, str]:
        return {"service": self.service, "region": self.region, "operation": self.operation, "error": self.error,
                "at": isoformat(self.at) or ""}


def scenario_faults(faults: Iterable[ScenarioFault], *, primary_region: str, recovery_region: str) -> list[Fault]:
    """The scenario's faults, with "primary"/"recovery" resolved to region names."""
    regions = {"primary": primary_region, "recovery": recovery_region}
    return [Fault(f.service, regions[f.region], f.operation, f.error, f.count) for f in faults]


@dataclass
class _Armed:
    fault: Fault
    remaining: int | None  # None: unlimited


@dataclass(frozen=True)
class _Doomed:
    """The mark of a call that fails: what every attempt of it answers."""

    service: str
    protocol: str
    error: str
    counted: bool = True  # False: a refused service (a region outage), not a fault


_DATA_PLANE_EMULATION: ContextVar[bool] = ContextVar("jamsdr_data_plane_emulation", default=False)


@contextmanager
def data_plane_emulation() -> Iterator[None]:
    """Calls made inside emulate a data plane through a control-plane API (``Resolver`` reads Route 53's
    records to answer DNS, which AWS answers without its us-east-1 control plane): never refused."""
    token = _DATA_PLANE_EMULATION.set(True)
    try:
        yield
    finally:
        _DATA_PLANE_EMULATION.reset(token)


# A key of botocore's per-call request context: namespaced, as botocore's own keys share the dict.
_CONTEXT_KEY = "jamsdr_fault"


class FaultInjector:
    """Arms faults on every client of one ClientFactory (present and future), thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._armed: list[_Armed] = []
        self._refused: frozenset[str] = frozenset()
        self._injected: list[InjectedFault] = []
        self._failed_attempts = 0
        self._factory: ClientFactory | None = None
        self._clock: Clock = SystemClock()
        # Bound once: each attribute access makes a new bound method, and unregistering needs the same one.
        self._hooks: tuple[tuple[str, Any], ...] = (
            ("before-call", self._before_call), ("before-send", self._before_send))

    # -- wiring ---------------------------------------------------------------------------

    def install(self, factory: ClientFactory) -> None:
        """Hook every client of ``factory``; with nothing armed the hooks only look at an empty list."""
        if self._factory is factory:
            return
        self.uninstall()
        for event_name, handler in self._hooks:
            factory.register_hook(event_name, handler)
        self._factory = factory

    def uninstall(self) -> None:
        if self._factory is not None:
            for event_name, handler in self._hooks:
                self._factory.unregister_hook(event_name, handler)
            self._factory = None

    # -- arming ---------------------------------------------------------------------------

    def arm(self, faults: Iterable[Fault], *, clock: Clock | None = None) -> None:
        """Add ``faults`` to those armed; a call matching several takes the first with calls left.

        ``clock`` stamps the injected calls (the drill's clock, so that they line up with its report).
        """
        armed = [_Armed(fault, fault.count) for fault in faults]
        with self._lock:
            if clock is not None:
                self._clock = clock
            self._armed.extend(armed)

    def refuse_services(self, services: Iterable[str]) -> None:
        """From now on every call of ``services`` (botocore names) refuses its connection, in every region;
        replaces the services refused before (empty: none). Not a fault: ``clear`` and ``forget`` keep it,
        ``injected`` does not list it; the region's outage decides (EmbeddedAws.take_region_down)."""
        with self._lock:
            self._refused = frozenset(services)

    @property
    def refused_services(self) -> frozenset[str]:
        return self._refused

    def clear(self) -> None:
        """Disarm every fault; what was injected stays recorded (a call already failing ends as it began)."""
        with self._lock:
            self._armed = []

    def forget(self) -> None:
        """Disarm and forget what was injected (a fresh world)."""
        with self._lock:
            self._armed = []
            self._injected = []
            self._failed_attempts = 0

    # -- what happened --------------------------------------------------------------------

    @property
    def injected(self) -> tuple[InjectedFault, ...]:
        """Every API call that failed by a fault, in the order they were made."""
        with self._lock:
            return tuple(self._injected)

    @property
    def failed_attempts(self) -> int:
        """HTTP attempts failed (botocore's retries of the calls in ``injected`` included)."""
        with self._lock:
            return self._failed_attempts

    def remaining(self) -> list[tuple[Fault, int | None]]:
        """Each armed fault with the calls it still fails (None: unlimited)."""
        with self._lock:
            return [(armed.fault, armed.remaining) for armed in self._armed]

    # -- hooks ----------------------------------------------------------------------------

    def _before_call(self, model: Any, context: dict[str, Any], **_: Any) -> None:
        refused = self._refused
        if refused and not _DATA_PLANE_EMULATION.get():
            service = str(model.service_model.service_name)
            if service in refused:
                context[_CONTEXT_KEY] = _Doomed(service, str(model.service_model.resolved_protocol), CONNECTION,
                                                counted=False)
                return
        if not self._armed:  # the common case, without the lock: a drill arms faults only after the failure
            return
        service = str(model.service_model.service_name)
        region = str(context.get("client_region"))
        operation = str(model.name)
        chosen: Fault | None = None
        with self._lock:
            for armed in self._armed:
                fault = armed.fault
                if armed.remaining == 0 or (fault.service, fault.region, fault.operation) != (
                        service, region, operation):
                    continue
                if armed.remaining is not None:
                    armed.remaining -= 1
                chosen = fault
                self._injected.append(InjectedFault(service, region, operation, fault.error, self._clock.now()))
                break
        if chosen is not None:
            context[_CONTEXT_KEY] = _Doomed(service, str(model.service_model.resolved_protocol), chosen.error)

    def _before_send(self, request: Any, **_: Any) -> AWSResponse | None:
        context = getattr(request, "context", None) or {}
        doomed = context.get(_CONTEXT_KEY)
        if not isinstance(doomed, _Doomed):
            return None
        if doomed.counted:
            with self._lock:
                self._failed_attempts += 1
        if doomed.error == CONNECTION:
            # What botocore's HTTP session raises when the connection is refused, for the same URL.
            raise EndpointConnectionError(endpoint_url=request.url)
        return forged_error(request.url, doomed.service, doomed.protocol, doomed.error)
