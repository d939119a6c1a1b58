"""Static stability, proven: every AWS call of the recovery, the drill and the failback, classified.

A recovery must work with the primary region gone, and must not need a control plane that lives in
us-east-1 for the whole partition (Route 53's API, IAM, Organizations): us-east-1 may be the region it
is recovering from. Sources:

- Amazon Builders' Library, "Static stability using Availability Zones"
  (https://aws.amazon.com/builders-library/static-stability-using-availability-zones/): a statically
  stable system keeps working through an impairment without making changes through a control plane.
- AWS Well-Architected Framework, Reliability Pillar, REL11-BP04 "Rely on the data plane and not the
  control plane during recovery"
  (https://docs.aws.amazon.com/wellarchitected/latest/reliability-pillar/rel_withstand_component_failures_avoid_control_plane.html).
- AWS whitepaper "AWS Fault Isolation Boundaries", "Global services"
  (https://docs.aws.amazon.com/whitepapers/latest/aws-fault-isolation-boundaries/global-services.html):
  the control planes of IAM and AWS Organizations are in us-east-1, Route 53's too; do not depend on a
  global service's control plane in a recovery path.
- IAM User Guide, "Resilience in AWS Identity and Access Management"
  (https://docs.aws.amazon.com/IAM/latest/UserGuide/disaster-recovery-resiliency.html): one IAM control
  plane for all commercial regions, in US East (N. Virginia); each region has its own data plane.
- Amazon Route 53 Developer Guide, "Resilience in Amazon Route 53"
  (https://docs.aws.amazon.com/Route53/latest/DeveloperGuide/disaster-recovery-resiliency.html): the
  control plane (the API: record and health-check changes) is in us-east-1; the data plane (DNS answers
  and health checks) is global and keeps working without it.

What is here:

- ``CLASSIFICATION``: (botocore service, operation) -> plane (data or control), with the rule and its
  source. ``classify`` raises ``Unclassified`` for anything else: a new call forces a classification.
- ``POLICIES``: what each workflow may call. Recovery: the primary region only in the fence step(s)
  (best effort: a fence that cannot reach the primary records a pending fence), never a global control
  plane. Drill: it rehearses the recovery, so neither. Failback: the primary (healthy by its
  preflight), never a global control plane.
- ``Recorder``: botocore ``before-parameter-build`` hooks that attribute every call of a workflow run
  to its workflow and step (the engine's ledger writes around a step count as the step's).
- ``record_runs`` runs the embedded drill twice (a region failure recovered then failed back, with
  us-east-1 down during the recovery; a plain drill) and ``render`` writes docs/static-stability.md:

      python -m jamsdr.static_stability --write docs/static-stability.md   # make static-stability
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from chalicelib.aws import ClientFactory

Plane = Literal["data", "control"]
RegionRole = Literal["primary", "recovery", "global", "other"]

DOC_PATH = Path(__file__).resolve().parent.parent / "docs" / "static-stability.md"
REGENERATE = "python -m jamsdr.static_stability --write docs/static-stability.md"

# --------------------------------------------------------------------------- sources and rules


@dataclass(frozen=True)
class Source:
    title: str
    url: str

    def markdown(self) -> str:
        return f"[{self.title}]({self.url})"


STATIC_STABILITY = Source("Amazon Builders' Library, \"Static stability using Availability Zones\"",
                          "https://aws.amazon.com/builders-library/static-stability-using-availability-zones/")
REL11 = Source("Well-Architected Reliability Pillar, REL11-BP04 \"Rely on the data plane and not the control plane "
               "during recovery\"",
               "https://docs.aws.amazon.com/wellarchitected/latest/reliability-pillar/"
               "rel_withstand_component_failures_avoid_control_plane.html")
FAULT_ISOLATION = Source("AWS Fault Isolation Boundaries, \"Global services\"",
                         "https://docs.aws.amazon.com/whitepapers/latest/aws-fault-isolation-boundaries/"
                         "global-services.html")
IAM_RESILIENCE = Source("IAM User Guide, \"Resilience in AWS Identity and Access Management\"",
                        "https://docs.aws.amazon.com/IAM/latest/UserGuide/disaster-recovery-resiliency.html")
ROUTE53_RESILIENCE = Source("Route 53 Developer Guide, \"Resilience in Amazon Route 53\"",
                            "https://docs.aws.amazon.com/Route53/latest/DeveloperGuide/disaster-recovery-resiliency.html")
DYNAMODB_API = Source("DynamoDB Developer Guide, \"DynamoDB API\" (control plane / data plane operations)",
                      "https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/HowItWorks.API.html")


@dataclass(frozen=True)
class Rule:
    key: str
    text: str
    sources: tuple[Source, ...]


REGIONAL_DATA = Rule(
    "regional-data",
    "regional data plane: reads and writes the data of a resource that already exists (items, objects, "
    "messages, metric data, parameter values, invocations)",
    (STATIC_STABILITY, REL11, DYNAMODB_API))
REGIONAL_CONTROL = Rule(
    "regional-control",
    "regional control plane: creates, changes, deletes, describes or lists resources in one region",
    (STATIC_STABILITY, REL11))
GLOBAL_CONTROL = Rule(
    "global-control",
    "global control plane, hosted in us-east-1 whatever region the client names: every API call of the "
    "service (reads included); only its data plane (DNS answers and health checks; authentication) is "
    "regional or global",
    (FAULT_ISOLATION, IAM_RESILIENCE, ROUTE53_RESILIENCE, REL11))
RULES: tuple[Rule, ...] = (REGIONAL_DATA, REGIONAL_CONTROL, GLOBAL_CONTROL)

# Services whose whole API is a control plane in one region of the aws partition (sources above).
GLOBAL_CONTROL_PLANES: dict[str, str] = {"route53": "us-east-1", "iam": "us-east-1", "organizations": "us-east-1"}


@dataclass(frozen=True)
class Classification:
    plane: Plane
    rule: Rule


def _ops(service: str, plane: Plane, rule: Rule, *operations: str) -> dict[tuple[str, str], Classification]:
    return {(service, operation): Classification(plane, rule) for operation in operations}


# (botocore service name, operation) -> plane: what the chain's code calls (the recorded runs, plus the
# calls of paths a successful run does not take: a failed stack's events, a drill's final snapshot, the
# Lambda chain's next invocation) and the global control-plane calls the checker must recognise. A call
# missing here fails the recording (``Unclassified``): a new call gets classified before it ships.
CLASSIFICATION: dict[tuple[str, str], Classification] = {
    **_ops("dynamodb", "data", REGIONAL_DATA, "DeleteItem", "GetItem", "PutItem", "Scan", "TransactWriteItems",
           "UpdateItem"),
    **_ops("s3", "data", REGIONAL_DATA, "GetObject", "PutObject"),
    **_ops("sns", "data", REGIONAL_DATA, "Publish"),
    **_ops("cloudwatch", "data", REGIONAL_DATA, "GetMetricData", "PutMetricData"),
    **_ops("ssm", "data", REGIONAL_DATA, "GetParameter"),
    # The production chain hands each slice to the next Lambda invocation (the drill runs in process).
    **_ops("lambda", "data", REGIONAL_DATA, "Invoke"),
    # An alarm's configuration and state: served by CloudWatch's regional API, not its metric data path.
    **_ops("cloudwatch", "control", REGIONAL_CONTROL, "DescribeAlarms"),
    **_ops("cloudformation", "control", REGIONAL_CONTROL, "CreateStack", "DeleteStack", "DescribeStackEvents",
           "DescribeStacks", "GetTemplateSummary", "ListStackResources", "UpdateStack", "ValidateTemplate"),
    **_ops("rds", "control", REGIONAL_CONTROL, "AddTagsToResource", "CopyDBSnapshot", "CreateDBSnapshot",
           "DeleteDBSnapshot", "DescribeDBInstances", "DescribeDBSnapshots", "DescribeEvents", "ModifyDBInstance"),
    **_ops("ec2", "control", REGIONAL_CONTROL, "CreateSecurityGroup", "CreateTags", "DeleteSecurityGroup",
           "DescribeImages", "DescribeInstances", "DescribeRouteTables", "DescribeSecurityGroups",
           "DescribeVpcEndpoints", "DescribeVpcs", "ModifyInstanceAttribute", "RevokeSecurityGroupEgress",
           "StartInstances", "StopInstances"),
    **_ops("elbv2", "control", REGIONAL_CONTROL, "DescribeLoadBalancers", "DescribeTargetHealth"),
    **_ops("autoscaling", "control", REGIONAL_CONTROL, "DescribeAutoScalingGroups"),
    **_ops("route53", "control", GLOBAL_CONTROL, "ChangeResourceRecordSets", "CreateHealthCheck", "CreateHostedZone",
           "DeleteHealthCheck", "GetChange", "GetHealthCheck", "GetHealthCheckStatus", "ListResourceRecordSets",
           "UpdateHealthCheck"),
    **_ops("iam", "control", GLOBAL_CONTROL, "AddRoleToInstanceProfile", "AttachRolePolicy", "CreateInstanceProfile",
           "CreateRole", "GetInstanceProfile", "GetRole", "PutRolePolicy"),
    **_ops("organizations", "control", GLOBAL_CONTROL, "DescribeOrganization", "ListAccounts"),
}


class Unclassified(KeyError):
    """An AWS call nobody has classified yet."""

    def __str__(self) -> str:
        return str(self.args[0])


def classify(service: str, operation: str) -> Classification:
    found = CLASSIFICATION.get((service, operation))
    if found is None:
        raise Unclassified(
            f"{service} {operation} is not classified: add ({service!r}, {operation!r}) to CLASSIFICATION in "
            "jamsdr/static_stability.py with its plane and rule, then regenerate the doc "
            f"(`{REGENERATE}`)")
    if (service in GLOBAL_CONTROL_PLANES) != (found.rule is GLOBAL_CONTROL):
        raise ValueError(f"{service} {operation}: a global service's calls are its global control plane, and only "
                         "theirs are")
    return found


def region_role(service: str, region: str, *, primary: str, recovery: str) -> RegionRole:
    """Where a call lands: a global service's API is its control-plane region's, whatever the client names."""
    if service in GLOBAL_CONTROL_PLANES:
        return "global"
    if region == primary:
        return "primary"
    if region == recovery:
        return "recovery"
    return "other"


# --------------------------------------------------------------------------- what each workflow may call


def fence_steps() -> frozenset[str]:
    """The recovery's best-effort fence: the states that run ``fence.fence_primary`` (they tolerate an
    unanswering primary by recording a pending fence)."""
    from chalicelib.workflow.definitions import recovery_workflow  # noqa: PLC0415
    from chalicelib.workflow.steps import fence  # noqa: PLC0415

    return frozenset(s.name for s in recovery_workflow().states if s.action is fence.fence_primary)


@dataclass(frozen=True)
class Policy:
    workflow: str
    primary_steps: frozenset[str] | None  # None: every step may call the primary region
    why: str


def policies() -> dict[str, Policy]:
    return {
        "recovery": Policy("recovery", fence_steps(),
                           "after the decision the primary region may be gone: only the best-effort fence "
                           "may call it, and no global control plane at all"),
        "drill": Policy("drill", frozenset(),
                        "a drill rehearses the recovery in the recovery region: it may depend on nothing the "
                        "recovery may not"),
        "failback": Policy("failback", None,
                           "a failback moves JAMS back to the primary region, which its preflight requires to "
                           "answer; the traffic switch needs no global control plane"),
    }


WORKFLOW_PREFIXES = {"rec-": "recovery", "drill-": "drill", "fb-": "failback"}


def workflow_of(execution_id: str) -> str:
    for prefix, workflow in WORKFLOW_PREFIXES.items():
        if execution_id.startswith(prefix):
            return workflow
    raise ValueError(f"execution {execution_id}: no workflow for its id (known prefixes: "
                     f"{', '.join(WORKFLOW_PREFIXES)}); add it to WORKFLOW_PREFIXES and POLICIES")


# --------------------------------------------------------------------------- calls and verdicts


@dataclass(frozen=True)
class Call:
    workflow: str
    step: str
    region: str  # the client's region (for a global service: only the signing region)
    service: str  # botocore's service name
    operation: str
    caller: str = ""  # module.function that made the call


@dataclass(frozen=True)
class Verdict:
    call: Call
    role: RegionRole
    classification: Classification
    allowed: bool
    reason: str

    def describe(self) -> str:
        c = self.call
        return (f"{c.workflow} step {c.step}: {c.service} {c.operation} in {c.region} ({self.role}, "
                f"{self.classification.plane} plane){' from ' + c.caller if c.caller else ''}: {self.reason}")


def judge(call: Call, *, primary: str, recovery: str, rules: dict[str, Policy] | None = None) -> Verdict:
    """Classify one call and say whether its workflow may make it (raises ``Unclassified``)."""
    classification = classify(call.service, call.operation)
    role = region_role(call.service, call.region, primary=primary, recovery=recovery)
    policy = (rules or policies()).get(call.workflow)
    if policy is None:
        raise ValueError(f"workflow {call.workflow}: no policy; add one to policies() in jamsdr/static_stability.py")
    if role == "global":
        where = GLOBAL_CONTROL_PLANES[call.service]
        return Verdict(call, role, classification, False, f"NO: global control plane ({where})")
    if role == "other":
        return Verdict(call, role, classification, False, f"NO: {call.region} is neither the primary nor the "
                                                          "recovery region")
    if role == "recovery":
        return Verdict(call, role, classification, True, "yes")
    if policy.primary_steps is None:
        return Verdict(call, role, classification, True, "yes: needs the primary healthy")
    if call.step in policy.primary_steps:
        return Verdict(call, role, classification, True, "yes: best-effort fence")
    return Verdict(call, role, classification, False, "NO: primary region after the decision")


def violations(calls: Iterable[Call], *, primary: str, recovery: str) -> list[Verdict]:
    rules = policies()
    return [v for call in calls if not (v := judge(call, primary=primary, recovery=recovery, rules=rules)).allowed]


# --------------------------------------------------------------------------- recording


_SKIPPED_MODULES = ("botocore", "boto3", "jamsdr.static_stability")


def _caller() -> str | None:
    """The code that made the current botocore call; None when it is the embedded AWS's own emulation
    (jamsdr/: a route deleted with its stack, a DNS answer computed), which the product never calls."""
    frame = sys._getframe(2)  # the hook's caller's caller: inside botocore
    while frame is not None:
        module = str(frame.f_globals.get("__name__", ""))
        if not module.startswith(_SKIPPED_MODULES):
            if module.startswith("jamsdr."):
                return None
            return f"{module}.{frame.f_code.co_name}"
        frame = frame.f_back  # type: ignore[assignment]
    return None


class Recorder:
    """Records every AWS call a workflow run makes, attributed to its workflow and step.

    Feed it the runner's progress (``on_progress``): a state's start names the step for the calls on
    that thread until the next state starts or the execution ends. Calls on other threads (the drill's
    simulated JAMS fleet) and the embedded AWS's own emulation calls are not the product's: not recorded.
    """

    def __init__(self, factory: ClientFactory | None = None) -> None:
        self.calls: list[Call] = []
        self._lock = threading.Lock()
        self._current: dict[int, tuple[str, str]] = {}
        self._factory: ClientFactory | None = None
        if factory is not None:
            self.attach(factory)

    def attach(self, factory: ClientFactory) -> None:
        if self._factory is factory:
            return
        self.detach()
        factory.register_hook("before-parameter-build", self._hook)
        self._factory = factory

    def detach(self) -> None:
        if self._factory is not None:
            self._factory.unregister_hook("before-parameter-build", self._hook)
            self._factory = None

    def on_progress(self, progress: Any) -> None:
        """The runner's ProgressCallback (chalicelib.workflow.engine.Progress)."""
        if self._factory is None:
            from chalicelib.aws import get_factory  # noqa: PLC0415 - the embedded drill installs its own

            self.attach(get_factory())
        thread = threading.get_ident()
        with self._lock:
            if progress.kind == "execution-ended":
                self._current.pop(thread, None)
            elif progress.kind == "state-started":
                self._current[thread] = (workflow_of(progress.execution_id), str(progress.state))

    @contextmanager
    def step(self, workflow: str, step: str) -> Iterator[None]:
        """Attribute this thread's calls to ``workflow``/``step`` (tests that call a step directly)."""
        thread = threading.get_ident()
        with self._lock:
            previous = self._current.get(thread)
            self._current[thread] = (workflow, step)
        try:
            yield
        finally:
            with self._lock:
                if previous is None:
                    self._current.pop(thread, None)
                else:
                    self._current[thread] = previous

    def _hook(self, model: Any, context: dict[str, Any], **_: Any) -> None:
        current = self._current.get(threading.get_ident())
        if current is None:
            return
        caller = _caller()
        if caller is None:
            return
        call = Call(current[0], current[1], str(context.get("client_region")),
                    str(model.service_model.service_name), str(model.name), caller)
        with self._lock:
            self.calls.append(call)


# --------------------------------------------------------------------------- the recorded run


@dataclass
class Recording:
    primary: str
    recovery: str
    calls: list[Call] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)  # what was run, for the doc


# The recorded runs: a region failure recovered automatically then failed back (the primary is down
# during the whole recovery), and a plain drill. Defaults otherwise (primary us-east-1).
RECORDED_SCENARIOS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("region failure, recovered, then failed back (`{\"failback\": true}`); the primary region is down "
     "(every API call into it refused) from before the decision to the end of the recovery", {"failback": True}),
    ("plain drill (`{\"failure\": \"none\"}`)", {"failure": "none"}),
)


def record_runs(report_root: Path | None = None) -> Recording:
    """Run the recorded scenarios through the embedded drill and return every call their chains made."""
    from jamsdr.drill import run_embedded_drill  # noqa: PLC0415 - the embedded AWS, only when recording
    from jamsdr.scenario import parse_scenario  # noqa: PLC0415

    recording: Recording | None = None
    with tempfile.TemporaryDirectory(prefix="jamsdr-static-stability-") as scratch:
        root = report_root or Path(scratch)
        for description, fields in RECORDED_SCENARIOS:
            scenario = parse_scenario(fields)
            recorder = Recorder()
            try:
                # In process: the recorder names a call's step by the thread that runs it, which the in-process
                # runner keeps (the deployed chain runs in Lambda worker threads); the calls are the same code's.
                result = run_embedded_drill(scenario, root, progress=recorder.on_progress, in_process=True)
            finally:
                recorder.detach()
            if not result.matches_expectation:
                # A forbidden call is the likeliest cause (the embedded AWS refuses the primary and the
                # global control planes while us-east-1 is down): name it, not only the failed run.
                try:
                    found = [v.describe() for v in violations(recorder.calls, primary=scenario.primary_region,
                                                               recovery=scenario.recovery_region)]
                except (Unclassified, ValueError) as exc:
                    found = [str(exc)]
                named = "; ".join(found) if found else "no forbidden call recorded"
                raise RuntimeError(f"the recorded run {fields} did not end as expected "
                                   f"({result.report.get('decision')}/{result.report.get('outcome')}): {named}; see "
                                   f"{result.report_dir / 'drill.log'}")
            if recording is None:
                recording = Recording(scenario.primary_region, scenario.recovery_region)
            recording.calls.extend(recorder.calls)
            recording.runs.append(description)
    assert recording is not None
    return recording


# --------------------------------------------------------------------------- the document


_ROLE_ORDER = {"recovery": 0, "primary": 1, "global": 2, "other": 3}


def rows(recording: Recording) -> dict[str, list[Verdict]]:
    """Per workflow (recovery, drill, failback), one verdict per distinct (step, region, service,
    operation), steps in their workflow's order."""
    from chalicelib.workflow.definitions import WORKFLOWS  # noqa: PLC0415

    rules = policies()
    out: dict[str, list[Verdict]] = {}
    for workflow in rules:
        order = {state.name: i for i, state in enumerate(WORKFLOWS[workflow]().states)}
        distinct: dict[tuple[str, str, str, str], Verdict] = {}
        for call in recording.calls:
            if call.workflow != workflow:
                continue
            key = (call.step, call.region, call.service, call.operation)
            if key not in distinct:
                bare = Call(call.workflow, call.step, call.region, call.service, call.operation)
                distinct[key] = judge(bare, primary=recording.primary, recovery=recording.recovery, rules=rules)
        out[workflow] = sorted(distinct.values(), key=lambda v: (
            order.get(v.call.step, len(order)), v.call.step, _ROLE_ORDER[v.role], v.call.service, v.call.operation))
    return out


def _region_cell(verdict: Verdict) -> str:
    if verdict.role == "global":
        return f"global (control plane in {GLOBAL_CONTROL_PLANES[verdict.call.service]})"
    return f"{verdict.role} ({verdict.call.region})"


def render(recording: Recording) -> str:
    rules = policies()
    table = rows(recording)
    lines = [
        "# Static stability: every AWS call of the recovery, the drill and the failback",
        "",
        f"Generated by `{REGENERATE}` (`make static-stability`) from a recorded run; do not edit by hand:",
        "`tests/functional/test_static_stability.py` fails when this file differs from what the generator writes,",
        "and when a recovery calls the primary region outside the fence, or any global control plane.",
        "",
        f"Recorded runs (embedded AWS, primary `{recording.primary}`, recovery `{recording.recovery}`):",
        "",
        *[f"- {run}" for run in recording.runs],
        "",
        "Each row is one distinct call of a step (the engine's ledger writes around a step count as the step's).",
        "The embedded AWS's own emulation calls and the simulated JAMS fleet are not listed.",
        "",
        "## What each workflow may call",
        "",
        "| workflow | primary region | global control planes | why |",
        "|---|---|---|---|",
    ]
    for name, policy in rules.items():
        primary = ("any step" if policy.primary_steps is None
                   else ", ".join(f"`{s}` (best effort)" for s in sorted(policy.primary_steps)) or "never")
        lines.append(f"| {name} | {primary} | never | {policy.why} |")
    lines += ["", "## Rules", "", "| rule | plane | sources |", "|---|---|---|"]
    for rule in RULES:
        lines.append(f"| `{rule.key}`: {rule.text} | {'data' if rule is REGIONAL_DATA else 'control'} | "
                     + "; ".join(s.markdown() for s in rule.sources) + " |")
    for name, verdicts in table.items():
        lines += ["", f"## {name}", "", "| step | region | service | operation | plane | allowed |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {v.call.step} | {_region_cell(v)} | {v.call.service} | {v.call.operation} | "
                  f"{v.classification.plane} | {v.reason} |" for v in verdicts]
        if not verdicts:
            lines.append("| (no call recorded) | | | | | |")
    used = sorted({(c.service, c.operation) for c in recording.calls})
    lines += ["", "## The classification", "",
              "`CLASSIFICATION` in `jamsdr/static_stability.py`; `*` = called in the recorded runs.", "",
              "| service | operation | plane | rule |", "|---|---|---|---|"]
    for (service, operation), found in sorted(CLASSIFICATION.items()):
        mark = " *" if (service, operation) in used else ""
        lines.append(f"| {service} | {operation}{mark} | {found.plane} | `{found.rule.key}` |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None, *, record: Callable[[], Recording] = record_runs) -> int:
    parser = argparse.ArgumentParser(prog="python -m jamsdr.static_stability",
                                     description="Record the recovery, drill and failback and classify every "
                                                 "AWS call they make (docs/static-stability.md).")
    parser.add_argument("--write", type=Path, metavar="PATH", help="write the document to PATH")
    parser.add_argument("--check", type=Path, metavar="PATH",
                        help="exit 1 when PATH differs from the document or the recording has a violation")
    args = parser.parse_args(argv)
    recording = record()
    text = render(recording)
    bad = violations(recording.calls, primary=recording.primary, recovery=recording.recovery)
    for verdict in bad:
        print(f"violation: {verdict.describe()}", file=sys.stderr)
    if args.write is not None:
        args.write.write_text(text, encoding="utf-8")
        print(f"wrote {args.write}")
    if args.check is not None:
        current = args.check.read_text(encoding="utf-8") if args.check.exists() else ""
        if current != text:
            print(f"{args.check} is out of date: run `{REGENERATE}`", file=sys.stderr)
            return 1
    if args.write is None and args.check is None:
        sys.stdout.write(text)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
