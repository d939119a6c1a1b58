"""Static stability, proven from a recorded run (jamsdr/static_stability.py, docs/static-stability.md).

After the decision a recovery may call the primary region only to fence it (best effort: a fence that
cannot reach the primary leaves a pending fence), and never a global control plane: Route 53's API, IAM
and Organizations have their control plane in us-east-1, which may be the region being recovered from
(AWS Fault Isolation Boundaries, "Global services"; IAM User Guide and Route 53 Developer Guide,
"Resilience"; Well-Architected REL11-BP04 "Rely on the data plane and not the control plane during
recovery").

The recording is the embedded drill itself: a region failure recovered (us-east-1 down throughout) and
failed back, and a plain drill. The checker's own self-test runs a test-local workflow whose steps make
the calls the rule forbids, and shows the checker naming each.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from chalicelib.aws import ClientFactory
from chalicelib.clock import FakeClock
from chalicelib.detection.incident import Incident
from chalicelib.settings import Settings
from chalicelib.workflow.model import Done, State, StepContext, StepResult, Workflow
from chalicelib.workflow.runners import InProcessRunner
from chalicelib.workflow.starter import no_launch, start_incident_recovery
from jamsdr.embedded import EmbeddedAws, build_world
from jamsdr.static_stability import (
    DOC_PATH,
    REGENERATE,
    Call,
    Recorder,
    Recording,
    Unclassified,
    classify,
    fence_steps,
    judge,
    main,
    record_runs,
    render,
    violations,
)


@pytest.fixture(scope="module")
def recording() -> Recording:
    return record_runs()


def test_the_recovery_calls_neither_the_primary_outside_the_fence_nor_a_global_control_plane(
        recording: Recording) -> None:
    bad = violations(recording.calls, primary=recording.primary, recovery=recording.recovery)
    assert not bad, "static stability broken:\n" + "\n".join(v.describe() for v in bad)
    # The recording can see what the check forbids: the recovery did reach for the (down) primary, in
    # the fence, and every workflow made calls.
    recovery = [c for c in recording.calls if c.workflow == "recovery"]
    primary = {(c.step, c.service, c.operation) for c in recovery if c.region == recording.primary}
    assert primary and {step for step, _, _ in primary} <= fence_steps(), primary
    assert {c.workflow for c in recording.calls} == {"recovery", "drill", "failback"}
    assert "switch_traffic" in {c.step for c in recovery}


def test_every_recorded_call_is_classified(recording: Recording) -> None:
    for call in recording.calls:
        classify(call.service, call.operation)


def test_the_committed_document_is_what_the_generator_writes(recording: Recording) -> None:
    committed = DOC_PATH.read_text(encoding="utf-8") if DOC_PATH.exists() else ""
    assert committed == render(recording), f"docs/static-stability.md is out of date: run `{REGENERATE}`"


def test_the_generator_writes_and_checks_the_document(recording: Recording, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "static-stability.md"
    assert main(["--check", str(target)], record=lambda: recording) == 1
    assert f"is out of date: run `{REGENERATE}`" in capsys.readouterr().err
    assert main(["--write", str(target)], record=lambda: recording) == 0
    assert target.read_text(encoding="utf-8") == render(recording)
    assert main(["--check", str(target)], record=lambda: recording) == 0


# ------------------------------------------------------------------------------- the checker's self-test


def _primary_peek(ctx: StepContext) -> StepResult:
    ctx.clients.client("ec2", ctx.settings.primary_region).describe_instances()
    return Done(note="read the primary")


def _fence(ctx: StepContext) -> StepResult:
    ctx.clients.client("ec2", ctx.settings.primary_region).describe_instances()
    return Done(note="fenced")


def _dns_switch(ctx: StepContext) -> StepResult:
    # The switch the traffic step used to make: a record change through Route 53's API, here through a
    # client of the recovery region (its control plane is in us-east-1 all the same).
    route53 = ctx.clients.client("route53", ctx.settings.recovery_region)
    zone = route53.create_hosted_zone(Name="selftest.example.internal", CallerReference=ctx.execution_id)
    route53.change_resource_record_sets(HostedZoneId=zone["HostedZone"]["Id"], ChangeBatch={"Changes": [{
        "Action": "UPSERT", "ResourceRecordSet": {"Name": "jams.selftest.example.internal.", "Type": "CNAME",
                                                  "TTL": 60, "ResourceRecords": [{"Value": "elsewhere"}]}}]})
    return Done(note="switched through the control plane")


def _recovery_region_only(ctx: StepContext) -> StepResult:
    ctx.clients.client("cloudformation", ctx.settings.recovery_region).describe_stacks()
    return Done(note="recovery region")


def _unclassified(ctx: StepContext) -> StepResult:
    ctx.clients.client("sts", ctx.settings.recovery_region).get_caller_identity()
    return Done(note="a call nobody classified")


SELF_TEST_WORKFLOW = Workflow("recovery", states=(
    State("preflight", _primary_peek),
    State("fence_primary", _fence),
    State("create_app_stack", _recovery_region_only),
    State("switch_traffic", _dns_switch),
    State("verify", _unclassified),
))


def test_the_checker_names_each_forbidden_call_of_a_recovery(embedded: EmbeddedAws, clients: ClientFactory) -> None:
    s = build_world(clients, Settings.defaults(), dns=False).settings
    clock = FakeClock(datetime.now(UTC))
    incident = Incident(incident_id="selftest", decision="region-recovery", reason="self-test",
                        failure_at=clock.now() - timedelta(minutes=5), detected_at=clock.now(),
                        decided_at=clock.now())
    started = start_incident_recovery(s, clients, clock, incident, await_approval=False, launcher=no_launch)
    recorder = Recorder()
    runner = InProcessRunner(s, clients, clock, on_progress=recorder.on_progress)
    try:
        execution = runner.run(started.execution_id, workflow=SELF_TEST_WORKFLOW)
    finally:
        recorder.detach()
    assert execution.status == "succeeded", execution.error

    steps = {c.step for c in recorder.calls}
    assert {"preflight", "fence_primary", "create_app_stack", "switch_traffic", "verify"} <= steps
    with pytest.raises(Unclassified, match=r"sts GetCallerIdentity is not classified: add \('sts', "):
        violations(recorder.calls, primary=s.primary_region, recovery=s.recovery_region)

    classified = [c for c in recorder.calls if c.service != "sts"]
    bad = violations(classified, primary=s.primary_region, recovery=s.recovery_region)
    named = sorted({(v.call.step, v.call.service, v.call.operation, v.reason) for v in bad})
    assert named == [
        ("preflight", "ec2", "DescribeInstances", "NO: primary region after the decision"),
        ("switch_traffic", "route53", "ChangeResourceRecordSets", "NO: global control plane (us-east-1)"),
        ("switch_traffic", "route53", "CreateHostedZone", "NO: global control plane (us-east-1)"),
    ]
    change = next(v for v in bad if v.call.operation == "ChangeResourceRecordSets")
    assert change.describe().startswith(
        f"recovery step switch_traffic: route53 ChangeResourceRecordSets in {s.recovery_region} (global, control "
        "plane) from tests.functional.test_static_stability._dns_switch")


def test_the_same_calls_are_judged_by_workflow() -> None:
    primary, recovery = "us-east-1", "us-west-2"

    def verdict(workflow: str, step: str, region: str, service: str, operation: str) -> str:
        return judge(Call(workflow, step, region, service, operation), primary=primary, recovery=recovery).reason

    assert verdict("recovery", "fence_primary", primary, "ec2", "StopInstances") == "yes: best-effort fence"
    assert verdict("recovery", "verify", primary, "ec2", "DescribeInstances") == "NO: primary region after the decision"
    assert verdict("drill", "fence_primary", primary, "ec2", "DescribeInstances") == (
        "NO: primary region after the decision")
    assert verdict("failback", "retire_old_primary", primary, "cloudformation", "DeleteStack") == (
        "yes: needs the primary healthy")
    assert verdict("failback", "switch_traffic", recovery, "iam", "GetInstanceProfile") == (
        "NO: global control plane (us-east-1)")
    assert verdict("recovery", "notify", recovery, "sns", "Publish") == "yes"
    assert verdict("recovery", "notify", "eu-west-1", "sns", "Publish").startswith("NO: eu-west-1 is neither")
    with pytest.raises(ValueError, match="workflow rollback: no policy"):
        verdict("rollback", "rollback_stack", recovery, "cloudformation", "DeleteStack")
