"""The embedded Lambda runtime: what ``chalice package`` produces, deployed into the embedded AWS and run
in this process.

``jamsdr/chalice_package.py`` runs ``chalice package`` for a stage made of the drill's settings and the
policies jamsdr/iam.py generates for them; ``EmbeddedLambda.deploy`` reads the SAM template it writes
(functions, handlers, timeouts, environment, roles and their inline policies, schedules and event rules),
creates each role, each function and each EventBridge rule and target in the embedded AWS, and from then on
answers the embedded Lambda service's Invoke for those functions by running the handler named in the
template here, in process.

What it honours, as AWS Lambda does (sources in docs/emulator.md, "The embedded Lambda runtime"):
- synchronous Invoke runs at once and answers the handler's result (an error as ``FunctionError``);
- ``InvocationType=Event`` (an Invoke, an EventBridge rule's target, a schedule) is queued and answered
  202; it is delivered at least once, retried twice on an error or a timeout (one minute, then two
  minutes later), and now and then delivered twice;
- reserved concurrency: a function at its limit throttles a synchronous Invoke (429) and holds queued
  events back until it has room; a ``DryRun`` Invoke runs nothing;
- the timeout: ``context.get_remaining_time_in_millis()`` counts down from the function's ``Timeout``,
  and an invocation past it is stopped at its next AWS call or wait (the outcome ``timeout``);
- each invocation runs with its function's settings (its environment), its own credentials (a client
  factory of its own, whose calls the drill's IAM enforcer checks against that function's role) and the
  drill's clock.

Time is compressed by ``time_scale`` (real seconds per production second): the drill beats every second
instead of every minute, so a 900 s timeout lasts 15 s, the five-minute sweeper runs every 5 s.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import hashlib
import heapq
import importlib
import itertools
import json
import re
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from chalicelib.aws import ClientFactory, use_factory
from chalicelib.clock import Clock, SystemClock, isoformat, use_clock
from chalicelib.settings import Settings, use_settings
from jamsdr import chalice_package
from jamsdr.chalice_package import FunctionSpec, Package, PackageProblem, functions_from_sam
from jamsdr.iam_enforcement import ACCOUNT, Enforcer

# Lambda's asynchronous invocation: "If the function returns an error, Lambda attempts to run it two more
# times, with a one-minute wait between the first two attempts, and two minutes between the second and
# third" (https://docs.aws.amazon.com/lambda/latest/dg/invocation-async-error-handling.html).
ASYNC_RETRY_DELAYS_SECONDS = (60.0, 120.0)
# "Even if your function doesn't return an error, it's possible for it to receive the same event from
# Lambda multiple times" (same page): the runtime delivers every DUPLICATE_EVERY-th Invoke event twice, a
# fixed rhythm rather than a random one so that a drill is reproducible.
DUPLICATE_EVERY = 2
# A throttled event waits this long (real seconds) before it is tried again (Lambda backs off for up to 6 h).
THROTTLE_RETRY_SECONDS = 0.05


class LambdaTimeout(BaseException):
    """The invocation ran past its timeout: Lambda stops the function. A BaseException, so that the
    function's own ``except Exception`` cannot swallow it, as it cannot swallow Lambda stopping it."""


# -------------------------------------------------------------------------------------- invocations


@dataclass
class Invocation:
    """One run of a function (a retry or a duplicate delivery is an invocation of its own)."""

    function: str
    trigger: str  # schedule | event | invoke | manual
    started_at: datetime
    request_id: str
    attempt: int = 1
    duration_seconds: float = 0.0
    outcome: str = "running"  # ok | error | timeout
    error: str | None = None
    result: Any = None
    duplicate: bool = False
    invoked_by: str | None = None  # the function whose credentials signed the Invoke (trigger "invoke")
    # The event delivered: an event's retries and its duplicate delivery share it (None: run in place).
    event_id: int | None = None

    def to_report(self) -> dict[str, Any]:
        return {"function": self.function, "trigger": self.trigger, "started_at": isoformat(self.started_at),
                "duration_seconds": round(self.duration_seconds, 3), "outcome": self.outcome,
                "attempt": self.attempt, "duplicate": self.duplicate, "invoked_by": self.invoked_by}


class LambdaContext:
    """The context object Lambda passes to a handler (the attributes powertools and the handlers read)."""

    def __init__(self, spec: FunctionSpec, region: str, request_id: str, deadline: float) -> None:
        self.function_name = spec.name
        self.function_version = "$LATEST"
        self.invoked_function_arn = f"arn:aws:lambda:{region}:{ACCOUNT}:function:{spec.name}"
        self.memory_limit_in_mb = spec.memory_mb
        self.aws_request_id = request_id
        self.log_group_name = f"/aws/lambda/{spec.name}"
        self.log_stream_name = f"{datetime.now(UTC):%Y/%m/%d}/[$LATEST]{request_id.replace('-', '')}"
        self._deadline = deadline

    def get_remaining_time_in_millis(self) -> int:
        """Real milliseconds left: the function's timeout compressed like the rest of the drill."""
        return max(int((self._deadline - time.monotonic()) * 1000), 0)


_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("jamsdr_lambda_deadline", default=None)


class InvocationClock:
    """The drill's clock as one invocation sees it: a wait that would outlast the timeout ends the
    invocation at the timeout, as Lambda stops a function that is still waiting."""

    def __init__(self, base: Clock, deadline: float, timeout_seconds: int) -> None:
        self._base = base
        self._deadline = deadline
        self._timeout = timeout_seconds

    def now(self) -> datetime:
        return self._base.now()

    def sleep(self, seconds: float) -> None:
        left = self._deadline - time.monotonic()
        if seconds >= left:
            self._base.sleep(max(left, 0.0))
            raise LambdaTimeout(f"Task timed out after {self._timeout:.2f} seconds")
        self._base.sleep(seconds)


def _timeout_hook(**_: Any) -> None:
    """Before each AWS call of an invocation: past its timeout, Lambda has stopped it already."""
    deadline = _DEADLINE.get()
    if deadline is not None and time.monotonic() > deadline:
        raise LambdaTimeout("Task timed out (stopped at its next AWS call)")


@dataclass(order=True)
class _Delivery:
    due: float
    seq: int
    function: str = field(compare=False)
    event: Any = field(compare=False)
    trigger: str = field(compare=False)
    attempt: int = field(compare=False, default=1)
    duplicate: bool = field(compare=False, default=False)
    clock: Clock | None = field(compare=False, default=None)
    invoked_by: str | None = field(compare=False, default=None)
    event_id: int | None = field(compare=False, default=None)


@dataclass
class _Deployed:
    spec: FunctionSpec
    settings: Settings
    factory: ClientFactory
    entry: Callable[[Any, Any], Any]
    running: int = 0


class EmbeddedLambda:
    """The functions of one package, deployed into the embedded AWS and run here."""

    def __init__(self, admin: ClientFactory, region: str, *, clock: Clock | None = None, time_scale: float = 1.0,
                 enforcer: Enforcer | None = None, max_workers: int = 8) -> None:
        self._admin = admin
        self.region = region
        self.clock = clock or SystemClock()
        self.time_scale = time_scale
        self.enforcer = enforcer
        self._functions: dict[str, _Deployed] = {}
        self._by_key: dict[str, str] = {}
        self._lock = threading.Lock()
        self._queue: list[_Delivery] = []
        self._seq = itertools.count()
        self._wake = threading.Condition(self._lock)
        self._stopping = False
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="lambda")
        self._dispatcher: threading.Thread | None = None
        self._scheduler: threading.Thread | None = None
        self._schedule_stop = threading.Event()
        self._events_sent = 0
        self.invocations: list[Invocation] = []
        self._listeners: list[Callable[[Invocation], None]] = []

    # -- deployment -----------------------------------------------------------------------------

    def deploy(self, pkg: Package) -> list[FunctionSpec]:
        specs = functions_from_sam(pkg.sam, pkg.stage)
        iam = self._admin.client("iam", self.region)
        lam = self._admin.client("lambda", self.region)
        events = self._admin.client("events", self.region)
        trust = json.dumps({"Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}]})
        for spec in specs:
            role = iam.create_role(RoleName=spec.name, AssumeRolePolicyDocument=trust)["Role"]["Arn"]
            for index, document in enumerate(spec.policies):
                iam.put_role_policy(RoleName=spec.name, PolicyName=f"{spec.name}-{index}",
                                    PolicyDocument=json.dumps(document))
            arn = lam.create_function(
                FunctionName=spec.name, Runtime="python3.11", Role=role, Handler=spec.handler_path,
                Code={"ZipFile": pkg.zip_bytes}, Timeout=spec.timeout_seconds, MemorySize=spec.memory_mb,
                Environment={"Variables": dict(spec.environment)})["FunctionArn"]
            if spec.reserved_concurrency is not None:
                lam.put_function_concurrency(FunctionName=spec.name,
                                             ReservedConcurrentExecutions=int(spec.reserved_concurrency))
            if spec.schedule_seconds is not None or spec.pattern is not None:
                rule = f"{spec.name}-{'schedule' if spec.pattern is None else 'event'}"
                if spec.pattern is None:
                    minutes = max(spec.schedule_seconds or 60, 60) // 60
                    events.put_rule(Name=rule, ScheduleExpression=f"rate({minutes} minute{'s' if minutes > 1 else ''})")
                else:
                    events.put_rule(Name=rule, EventPattern=json.dumps(spec.pattern))
                events.put_targets(Rule=rule, Targets=[{"Id": spec.handler, "Arn": arn}])
            self._register(spec)
        return specs

    def _register(self, spec: FunctionSpec) -> None:
        module_name, attribute = spec.handler_path.rsplit(".", 1)
        root = str(chalice_package.PROJECT_DIR)
        if root not in sys.path:  # the package's root, as /var/task is in Lambda
            sys.path.insert(0, root)
        importlib.import_module("app")  # Lambda imports the app first: its middleware wraps every handler
        entry = getattr(importlib.import_module(module_name), attribute, None)
        if not callable(entry):
            raise PackageProblem(f"{spec.name}: handler {spec.handler_path} is not a function of the package")
        # Credentials of the function's own: what its calls are signed with, and what names it.
        key = "ASIA" + hashlib.sha256(spec.name.encode()).hexdigest()[:16].upper()
        factory = self._admin.with_credentials(key, hashlib.sha256(key.encode()).hexdigest())
        factory.register_hook("before-call", _timeout_hook)
        if self.enforcer is not None:
            # What is checked is what was deployed: the role's policy in the template.
            self.enforcer.policies[spec.handler] = spec.policy
            self.enforcer.install_for(factory, spec.handler)
        self._functions[spec.name] = _Deployed(spec, Settings.from_env(spec.environment), factory, entry)
        self._by_key[key] = spec.name

    def function_name(self, handler: str) -> str:
        for name, deployed in self._functions.items():
            if deployed.spec.handler == handler:
                return name
        raise KeyError(handler)

    def knows(self, name: str) -> bool:
        return self._resolve(name) is not None

    def _resolve(self, name_or_arn: str) -> str | None:
        name = name_or_arn.rsplit(":function:", maxsplit=1)[-1].split(":", maxsplit=1)[0]
        return name if name in self._functions else None

    def on_invocation(self, listener: Callable[[Invocation], None]) -> None:
        self._listeners.append(listener)

    # -- the Lambda service -----------------------------------------------------------------------

    def handle_invoke(self, name: str, body: bytes | str | None, headers: Mapping[str, Any],
                      response_headers: dict[str, Any]) -> bytes:
        """moto's Invoke, for a deployed function."""
        resolved = self._resolve(name)
        assert resolved is not None
        raw = body.decode() if isinstance(body, bytes) else (body or "")
        event = json.loads(raw) if raw.strip() else {}
        caller = self._caller(headers)
        trigger = "invoke" if caller is not None else "manual"
        caller_handler = self._functions[caller].spec.handler if caller is not None else None
        if headers.get("X-Amz-Invocation-Type") == "DryRun":
            return b""  # AWS validates the request and the caller's permission; nothing runs (204)
        if headers.get("X-Amz-Invocation-Type") == "Event":
            self.enqueue(resolved, event, trigger, from_invoke=True, invoked_by=caller_handler)
            return b""
        deployed = self._functions[resolved]
        limit = deployed.spec.reserved_concurrency
        with self._lock:
            if limit is not None and deployed.running >= int(limit):
                raise _throttled(resolved)
            deployed.running += 1
        invocation = self._run(deployed, event, trigger, attempt=1, clock=None, duplicate=False,
                               invoked_by=caller_handler)
        if invocation.outcome != "ok":
            response_headers["x-amz-function-error"] = "Unhandled"
            return json.dumps({"errorType": "TimeoutError" if invocation.outcome == "timeout" else "Error",
                               "errorMessage": invocation.error or invocation.outcome}).encode()
        return json.dumps(invocation.result, default=str).encode()

    def _caller(self, headers: Mapping[str, Any]) -> str | None:
        """The function whose credentials signed the request (None: an operator's, a person's)."""
        match = re.search(r"Credential=([A-Z0-9]+)/", str(headers.get("Authorization", "")))
        return self._by_key.get(match.group(1)) if match else None

    def deliver_event(self, target_arn: str, event: Mapping[str, Any]) -> bool:
        """An EventBridge rule's target: the event is queued like an asynchronous invocation."""
        name = self._resolve(target_arn)
        if name is None:
            return False
        self.enqueue(name, dict(event), "event")
        return True

    def enqueue(self, name: str, event: Any, trigger: str, *, delay: float = 0.0, attempt: int = 1,
                duplicate: bool = False, from_invoke: bool = False, clock: Clock | None = None,
                invoked_by: str | None = None, event_id: int | None = None) -> None:
        with self._lock:
            if self._stopping:
                return
            due = time.monotonic() + delay
            seq = next(self._seq)
            event_id = seq if event_id is None else event_id
            heapq.heappush(self._queue, _Delivery(due, seq, name, event, trigger, attempt, duplicate, clock,
                                                  invoked_by, event_id))
            if from_invoke:
                self._events_sent += 1
                if self._events_sent % DUPLICATE_EVERY == 0:
                    heapq.heappush(self._queue, _Delivery(due + 0.02, next(self._seq), name, event, trigger,
                                                          attempt, True, clock, invoked_by, event_id))
            self._wake.notify_all()

    def invoke_now(self, handler: str, event: Any, *, trigger: str, clock: Clock | None = None) -> Invocation:
        """Run one invocation in the caller's thread (a schedule fired on a clock of the drill's choosing)."""
        deployed = self._functions[self.function_name(handler)]
        with self._lock:
            deployed.running += 1
        return self._run(deployed, event, trigger, attempt=1, clock=clock, duplicate=False)

    def _run(self, deployed: _Deployed, event: Any, trigger: str, *, attempt: int, clock: Clock | None,
             duplicate: bool, invoked_by: str | None = None, event_id: int | None = None) -> Invocation:
        """One invocation; ``deployed.running`` was counted up by the caller and is counted down here."""
        spec = deployed.spec
        base = clock or self.clock
        request_id = str(uuid.uuid4())
        timeout_real = spec.timeout_seconds * self.time_scale
        deadline = time.monotonic() + timeout_real
        invocation = Invocation(spec.handler, trigger, base.now(), request_id, attempt, duplicate=duplicate,
                                invoked_by=invoked_by, event_id=event_id)
        with self._lock:
            self.invocations.append(invocation)
        context = LambdaContext(spec, self.region, request_id, deadline)
        started = time.monotonic()
        token = _DEADLINE.set(deadline)
        try:
            with use_settings(deployed.settings), use_factory(deployed.factory), \
                    use_clock(InvocationClock(base, deadline, spec.timeout_seconds)):
                invocation.result = deployed.entry(event, context)
            invocation.outcome = "ok"
        except LambdaTimeout as exc:
            invocation.outcome, invocation.error = "timeout", str(exc)
        except Exception as exc:  # the function's error: Lambda reports it and retries an async event
            invocation.outcome, invocation.error = "error", f"{type(exc).__name__}: {exc}"
        finally:
            _DEADLINE.reset(token)
            invocation.duration_seconds = time.monotonic() - started
            if invocation.outcome == "ok" and invocation.duration_seconds > timeout_real:
                invocation.outcome, invocation.error = "timeout", "returned after its timeout"
            with self._lock:
                deployed.running -= 1
                self._wake.notify_all()
        for listener in list(self._listeners):
            listener(invocation)
        return invocation

    # -- the queue and the schedules ----------------------------------------------------------------

    def start(self) -> None:
        self._dispatcher = threading.Thread(target=self._dispatch, name="lambda-dispatch", daemon=True)
        self._dispatcher.start()

    def start_schedules(self) -> None:
        """EventBridge's schedules, on the drill's clock: each enabled schedule rule fires its function
        every period (compressed), first one period after this call."""
        self._schedule_stop.clear()
        self._scheduler = threading.Thread(target=self._schedule_loop, name="lambda-schedules", daemon=True)
        self._scheduler.start()

    def stop_schedules(self) -> None:
        self._schedule_stop.set()
        if self._scheduler is not None:
            self._scheduler.join(timeout=30)
            self._scheduler = None

    def quiesce(self, timeout_seconds: float = 30.0) -> None:
        """Stop firing schedules and wait until nothing is queued or running (what was queued still runs)."""
        self.stop_schedules()
        end = time.monotonic() + timeout_seconds
        with self._lock:
            while (self._queue or any(d.running for d in self._functions.values())) and time.monotonic() < end:
                self._wake.wait(timeout=0.1)

    def stop(self, drain_seconds: float = 30.0) -> None:
        """Stop firing schedules, let running invocations end (up to ``drain_seconds``), drop what is queued."""
        self.stop_schedules()
        with self._lock:
            self._stopping = True
            self._queue.clear()
            self._wake.notify_all()
        if self._dispatcher is not None:
            self._dispatcher.join(timeout=5)
        end = time.monotonic() + drain_seconds
        with self._lock:
            while any(d.running for d in self._functions.values()) and time.monotonic() < end:
                self._wake.wait(timeout=0.1)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _dispatch(self) -> None:
        with self._lock:
            while not self._stopping:
                if not self._queue:
                    self._wake.wait(timeout=0.5)
                    continue
                head = self._queue[0]
                wait = head.due - time.monotonic()
                if wait > 0:
                    self._wake.wait(timeout=wait)
                    continue
                heapq.heappop(self._queue)
                deployed = self._functions[head.function]
                limit = deployed.spec.reserved_concurrency
                if limit is not None and deployed.running >= int(limit):
                    head.due = time.monotonic() + THROTTLE_RETRY_SECONDS
                    heapq.heappush(self._queue, head)
                    self._wake.wait(timeout=THROTTLE_RETRY_SECONDS)
                    continue
                deployed.running += 1
                self._pool.submit(self._deliver, deployed, head)

    def _deliver(self, deployed: _Deployed, delivery: _Delivery) -> None:
        invocation = self._run(deployed, delivery.event, delivery.trigger, attempt=delivery.attempt,
                               clock=delivery.clock, duplicate=delivery.duplicate, invoked_by=delivery.invoked_by,
                               event_id=delivery.event_id)
        if invocation.outcome != "ok" and delivery.attempt <= len(ASYNC_RETRY_DELAYS_SECONDS):
            delay = ASYNC_RETRY_DELAYS_SECONDS[delivery.attempt - 1] * self.time_scale
            self.enqueue(delivery.function, delivery.event, delivery.trigger, delay=delay,
                         attempt=delivery.attempt + 1, clock=delivery.clock, invoked_by=delivery.invoked_by,
                         event_id=delivery.event_id)

    def _schedule_loop(self) -> None:
        period = {name: d.spec.schedule_seconds * self.time_scale for name, d in self._functions.items()
                  if d.spec.schedule_seconds is not None}
        if not period:
            return
        # EventBridge starts each schedule when its rule is created, not all on one beat: the longer ones
        # here run half a short period apart from the shortest (the watcher), so that the sweeper never
        # looks at an execution in the instant between its start and its launch (a drill stays reproducible).
        shortest = min(period.values())
        start = time.monotonic()
        next_due = {name: start + seconds + (0.0 if seconds == shortest else shortest / 2)
                    for name, seconds in period.items()}
        while not self._schedule_stop.is_set() and next_due:
            name = min(next_due, key=lambda n: next_due[n])
            wait = next_due[name] - time.monotonic()
            if wait > 0 and self._schedule_stop.wait(timeout=wait):
                return
            next_due[name] += period[name]
            if self._rule_enabled(f"{name}-schedule"):
                self.enqueue(name, self.scheduled_event(name), "schedule")

    def _rule_enabled(self, rule: str) -> bool:
        from moto.events.models import events_backends  # noqa: PLC0415 - the embedded AWS's own state

        found = events_backends[ACCOUNT][self.region].event_buses["default"].rules.get(rule)
        return found is not None and getattr(found, "state", "ENABLED") == "ENABLED"

    def scheduled_event(self, name: str, at: datetime | None = None) -> dict[str, Any]:
        """The event EventBridge sends a scheduled rule's target."""
        moment = at or self.clock.now()
        return {"version": "0", "id": str(uuid.uuid4()), "detail-type": "Scheduled Event", "source": "aws.events",
                "account": ACCOUNT, "time": moment.strftime("%Y-%m-%dT%H:%M:%SZ"), "region": self.region,
                "resources": [f"arn:aws:events:{self.region}:{ACCOUNT}:rule/{name}-schedule"], "detail": {}}

    def fire_schedule(self, handler: str, clock: Clock) -> Invocation:
        """One scheduled run of ``handler`` now, on ``clock`` (the drill's pipeline clock)."""
        name = self.function_name(handler)
        return self.invoke_now(handler, self.scheduled_event(name, clock.now()), trigger="schedule", clock=clock)

    def report(self) -> list[dict[str, Any]]:
        with self._lock:
            return [i.to_report() for i in sorted(self.invocations, key=lambda i: i.started_at)]


def _throttled(name: str) -> Exception:
    """Lambda's answer to a synchronous Invoke beyond the reserved concurrency: HTTP 429
    TooManyRequestsException, Reason ReservedFunctionConcurrentInvocationLimitExceeded (Lambda API
    reference, Invoke, Errors)."""
    from moto.awslambda.exceptions import LambdaClientError  # noqa: PLC0415 - the embedded server's own errors

    error = LambdaClientError("TooManyRequestsException",
                              f"Rate Exceeded. (reserved concurrency of {name})")
    error.code = 429
    return error


# -------------------------------------------------------------------------------------- moto patches

_ACTIVE: EmbeddedLambda | None = None
_installed = False


@contextlib.contextmanager
def active(runtime: EmbeddedLambda) -> Iterator[EmbeddedLambda]:
    """``runtime`` answers the embedded AWS's Lambda Invoke and EventBridge deliveries within."""
    global _ACTIVE  # noqa: PLW0603 - the one runtime the embedded server talks to
    install()
    _ACTIVE = runtime
    try:
        yield runtime
    finally:
        _ACTIVE = None


def install() -> None:
    """Patch moto (once): Invoke of a deployed function runs it here; an EventBridge rule whose target is a
    deployed function delivers to it (moto 5.2.5 refuses Lambda targets: it raises for them)."""
    global _installed  # noqa: PLW0603
    if _installed:
        return
    from moto.awslambda.models import LambdaBackend  # noqa: PLC0415
    from moto.events.models import Rule  # noqa: PLC0415

    original_invoke = LambdaBackend.invoke
    original_send = Rule.send_to_targets

    def invoke(self: Any, function_name: str, qualifier: str | None, body: Any, headers: Any,
               response_headers: Any) -> Any:
        runtime = _ACTIVE
        if runtime is not None and self.region_name == runtime.region and runtime.knows(function_name):
            payload = runtime.handle_invoke(function_name, body, headers, response_headers)
            response_headers["Content-Length"] = str(len(payload))
            return payload
        return original_invoke(self, function_name, qualifier, body, headers, response_headers)

    def send_to_targets(self: Any, original_event: Any, transform_input: bool = True) -> None:
        # EventBridge: a disabled rule delivers nothing, and a schedule rule (no pattern) matches no event;
        # moto delivers in both cases (an empty pattern matches everything).
        if getattr(self, "state", "ENABLED") != "ENABLED" or (
                getattr(self, "scheduled_expression", None) and not self.event_pattern.get_pattern()):
            return
        runtime = _ACTIVE
        targets = list(self.targets)
        ours = [t for t in targets if runtime is not None and ":lambda:" in str(t.get("Arn", ""))
                and runtime.knows(str(t["Arn"]))]
        if ours and runtime is not None and self.event_pattern.matches_event(original_event):
            delivered = dict(original_event)
            if isinstance(delivered.get("time"), int | float):  # moto keeps epoch seconds; AWS sends ISO 8601
                delivered["time"] = datetime.fromtimestamp(float(delivered["time"]), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            delivered.pop("ingestion-time", None)
            for target in ours:
                runtime.deliver_event(str(target["Arn"]), delivered)
        rest = [t for t in targets if t not in ours]
        if rest:
            clone = copy.copy(self)
            clone.targets = rest
            original_send(clone, original_event, transform_input)

    LambdaBackend.invoke = invoke  # type: ignore[method-assign]
    Rule.send_to_targets = send_to_targets  # type: ignore[method-assign]
    _installed = True
