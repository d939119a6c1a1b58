"""`jams-dr heartbeat` fences its own host once the host's region has been recovered elsewhere.

The positive answer is the ledger item ``fence#<env>`` in the recovery region's ledger, written by the
recovery's ``fence_primary`` (``Ledger.put_fence``, as here) when the old primary's region did not answer,
naming that region. On it the host runs the stop command and beats no more. A read that fails (table
missing, throttled, recovery region unreachable) proves nothing: the host beats on, never stops JAMS.

The CLI runs through click's CliRunner against the embedded two-region AWS, on a FakeClock (the loop
never really waits). The stop command is a real process without a shell: a Python one-liner that
records each attempt in a file and exits with the status the test chooses.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result

from chalicelib.aws import ClientFactory
from chalicelib.clock import FakeClock, SystemClock
from chalicelib.keys import fence_key
from chalicelib.settings import Settings
from chalicelib.workflow.ledger import Ledger
from jamsdr import heartbeat
from jamsdr.cli import main
from jamsdr.faults import Fault
from tests.conftest import PRIMARY, RECOVERY

ROOT = Path(__file__).resolve().parents[2]
ENVIRONMENT = "jams-sf"
TABLE = f"{ENVIRONMENT}-dr-ledger"
HOST = ["heartbeat", "--environment", ENVIRONMENT, "--scheduler", "primary", "--region", PRIMARY,
        "--recovery-region", RECOVERY]

# Appends one line per attempt to argv[1]; exits 1 while fewer than argv[2] attempts were made, else 0.
STOPPER = ("import pathlib, sys; p = pathlib.Path(sys.argv[1]); "
           "n = len(p.read_text().splitlines()) if p.exists() else 0; p.write_text('stop\\n' * (n + 1)); "
           "sys.exit(1 if n + 1 < int(sys.argv[2]) else 0)")


def stop_command(record: Path, succeed_at_attempt: int = 1) -> str:
    return shlex.join([sys.executable, "-c", STOPPER, str(record), str(succeed_at_attempt)])


def attempts(record: Path) -> int:
    return len(record.read_text().splitlines()) if record.exists() else 0


class HookedClock(FakeClock):
    """A FakeClock that runs ``on_sleep(n)`` before its n-th sleep (something happens between two beats)."""

    def __init__(self, on_sleep: Callable[[int], None] | None = None) -> None:
        super().__init__(SystemClock().now().replace(microsecond=0))  # CloudWatch takes recent beats
        self.on_sleep = on_sleep

    def sleep(self, seconds: float) -> None:
        if self.on_sleep is not None:
            self.on_sleep(len(self.slept) + 1)
        super().sleep(seconds)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> HookedClock:
    fake = HookedClock()
    monkeypatch.setattr(heartbeat, "host_clock", lambda: fake)
    return fake


@pytest.fixture
def ledger(clients: ClientFactory, clock: HookedClock) -> Ledger:
    """The environment's ledger table in the recovery region, as the dr-support stack makes it."""
    clients.client("dynamodb", RECOVERY).create_table(
        TableName=TABLE, BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}])
    return Ledger(Settings.defaults(environment=ENVIRONMENT), clients, clock)


def recovered_elsewhere(ledger: Ledger, region: str = PRIMARY) -> None:
    """What fence_primary records when ``region`` did not answer (chalicelib/workflow/steps/fence.py)."""
    assert ledger.put_fence("rec-20261206", 3, region, ())


def beats_in(clients: ClientFactory, region: str) -> int:
    """Beats of this environment in ``region`` (both schedulers, a day either side), as CloudWatch sums them."""
    cloudwatch = clients.client("cloudwatch", region)
    metrics = cloudwatch.list_metrics(Namespace="JAMS", MetricName="Heartbeat",
                                      Dimensions=[{"Name": "Environment", "Value": ENVIRONMENT}])["Metrics"]
    # moto lists a metric once per datapoint: each dimension set once.
    distinct = {tuple(sorted((d["Name"], d["Value"]) for d in m["Dimensions"])) for m in metrics}
    now, total = SystemClock().now(), 0.0
    for dims in distinct:
        answer = cloudwatch.get_metric_statistics(
            Namespace="JAMS", MetricName="Heartbeat", Dimensions=[{"Name": n, "Value": v} for n, v in dims],
            StartTime=now - timedelta(days=1), EndTime=now + timedelta(days=1), Period=60, Statistics=["Sum"])
        total += sum(p["Sum"] for p in answer["Datapoints"])
    return int(total)


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, [*HOST, *args])


# ---------------------------------------------------------------------------------------- positive fence


def test_a_positive_fence_stops_jams_and_the_beats(
    clients: ClientFactory, ledger: Ledger, clock: HookedClock, tmp_path: Path
) -> None:
    record = tmp_path / "stops"
    # Two beats, then the recovery fences the region between the second and the third.
    clock.on_sleep = lambda n: recovered_elsewhere(ledger) if n == 2 else None
    result = invoke("--stop-command", stop_command(record))
    assert result.exit_code == heartbeat.EXIT_FENCED == 4, result.output
    assert attempts(record) == 1
    assert beats_in(clients, PRIMARY) == 2 and beats_in(clients, RECOVERY) == 2  # none after the fence
    assert clock.slept == [60, 60]  # it stopped at the third round instead of beating
    assert "FENCED" in result.output and "rec-20261206" in result.output and "JAMS scheduler stopped" in result.output


def test_a_fence_of_another_region_is_not_this_hosts(
    clients: ClientFactory, ledger: Ledger, clock: HookedClock, tmp_path: Path
) -> None:
    """A JAMS restored in the recovery region reads the same item: it names the old primary's region."""
    record = tmp_path / "stops"
    recovered_elsewhere(ledger, PRIMARY)
    args = ["heartbeat", "--environment", ENVIRONMENT, "--scheduler", "primary", "--region", RECOVERY,
            "--recovery-region", RECOVERY, "--max-beats", "2", "--stop-command", stop_command(record)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert attempts(record) == 0 and beats_in(clients, RECOVERY) == 2


def test_the_stage_names_the_ledger_the_fence_is_read_from(
    clients: ClientFactory, clock: HookedClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--stage: ENVIRONMENT_NAME and RECOVERY_REGION of .chalice/config.json, the table <env>-dr-ledger."""
    monkeypatch.chdir(ROOT)
    dev = Settings.defaults(environment="jams-dev")
    clients.client("dynamodb", RECOVERY).create_table(
        TableName=dev.ledger_table_name, BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}])
    Ledger(dev, clients, clock).put_fence("rec-dev", 1, PRIMARY, ())
    record = tmp_path / "stops"
    result = CliRunner().invoke(main, ["heartbeat", "--stage", "dev", "--scheduler", "failover", "--once",
                                       "--stop-command", stop_command(record)])
    assert result.exit_code == 4, result.output
    assert attempts(record) == 1


# ---------------------------------------------------------------------------------------- failed reads


def test_a_missing_ledger_proves_nothing(clients: ClientFactory, clock: HookedClock, tmp_path: Path) -> None:
    record = tmp_path / "stops"
    result = invoke("--max-beats", "3", "--stop-command", stop_command(record))
    assert result.exit_code == 0, result.output  # every beat was published; the failed reads are logged
    assert attempts(record) == 0
    assert beats_in(clients, PRIMARY) == 3 and beats_in(clients, RECOVERY) == 3
    assert result.output.count("FAILED, beating on: ResourceNotFoundException") == 3


def test_a_throttled_read_keeps_beating_until_the_fence_is_read(
    embedded: Any, clients: ClientFactory, ledger: Ledger, clock: HookedClock, tmp_path: Path
) -> None:
    record = tmp_path / "stops"
    recovered_elsewhere(ledger)
    # Every attempt of the next two GetItem calls is throttled: two rounds cannot read the fence.
    embedded.fault_injector.arm([Fault("dynamodb", RECOVERY, "GetItem", "throttle", count=2)])
    result = invoke("--stop-command", stop_command(record))
    assert result.exit_code == 4, result.output
    assert result.output.count("FAILED, beating on: ThrottlingException") == 2
    assert beats_in(clients, PRIMARY) == 2  # beat while the read failed, never after it answered
    assert attempts(record) == 1


def test_an_unreachable_recovery_region_never_stops_jams(
    embedded: Any, clients: ClientFactory, ledger: Ledger, clock: HookedClock, tmp_path: Path
) -> None:
    record = tmp_path / "stops"
    recovered_elsewhere(ledger)  # the fence is there, but the host cannot read it
    embedded.take_region_down(RECOVERY)
    result = invoke("--max-beats", "3", "--stop-command", stop_command(record))
    embedded.bring_region_up(RECOVERY)
    assert result.exit_code == 1, result.output  # the recovery region's copy of each beat was not published
    assert attempts(record) == 0
    assert beats_in(clients, PRIMARY) == 3  # its own region's copy still gets every beat
    assert result.output.count("FAILED, beating on: Unreachable") == 3


# ---------------------------------------------------------------------------------------- no fence


def test_no_fence_beats_on(clients: ClientFactory, ledger: Ledger, clock: HookedClock, tmp_path: Path) -> None:
    record = tmp_path / "stops"
    result = invoke("--max-beats", "3", "--stop-command", stop_command(record))
    assert result.exit_code == 0, result.output
    assert attempts(record) == 0
    assert beats_in(clients, PRIMARY) == 3 and beats_in(clients, RECOVERY) == 3
    assert clock.slept == [60, 60]
    assert "FENCED" not in result.output and "FAILED" not in result.output


def test_the_read_is_the_one_the_scheduler_role_allows(
    clients: ClientFactory, ledger: Ledger, clock: HookedClock, tmp_path: Path
) -> None:
    """One strongly consistent GetItem of fence#<env> on <env>-dr-ledger in the recovery region: the key
    the role's dynamodb:LeadingKeys condition admits (templates/dr-support.yaml, ReadOwnFenceRecord)."""
    reads: list[tuple[str, dict[str, Any]]] = []

    def record_call(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        reads.append((str(context.get("client_region")), dict(params)))

    clients.register_hook("before-parameter-build.dynamodb", record_call)
    try:
        result = invoke("--once", "--stop-command", stop_command(tmp_path / "stops"))
    finally:
        clients.unregister_hook("before-parameter-build.dynamodb", record_call)
    assert result.exit_code == 0, result.output
    assert reads == [(RECOVERY, {"TableName": TABLE, "Key": {"pk": {"S": fence_key(ENVIRONMENT)}},
                                 "ConsistentRead": True})]

    template = yaml.safe_load((ROOT / "templates" / "dr-support.yaml").read_text())
    policies = template["Resources"]["SchedulerRole"]["Properties"]["Policies"]
    dynamodb = [s for p in policies for s in p["PolicyDocument"]["Statement"] if "dynamodb" in str(s["Action"])]
    assert len(dynamodb) == 1
    statement = dynamodb[0]
    assert statement["Action"] == "dynamodb:GetItem"
    assert statement["Resource"] == {"Fn::GetAtt": ["LedgerTable", "Arn"]}
    assert template["Resources"]["LedgerTable"]["Properties"]["TableName"] == {"Fn::Sub": "${EnvironmentName}-dr-ledger"}
    keys = statement["Condition"]["ForAllValues:StringEquals"]["dynamodb:LeadingKeys"]
    assert [k["Fn::Sub"].replace("${EnvironmentName}", ENVIRONMENT) for k in keys] == [fence_key(ENVIRONMENT)]


# ---------------------------------------------------------------------------------------- failing stop command


def test_a_failing_stop_command_is_reported_and_retried_without_beating(
    clients: ClientFactory, ledger: Ledger, clock: HookedClock, tmp_path: Path
) -> None:
    record = tmp_path / "stops"
    recovered_elsewhere(ledger)
    result = invoke("--stop-command", stop_command(record, succeed_at_attempt=3))
    assert result.exit_code == 4, result.output
    assert attempts(record) == 3 and clock.slept == [60, 60]  # retried at each beat
    assert "stop command FAILED (attempt 1" in result.output and "stop command FAILED (attempt 2" in result.output
    assert beats_in(clients, PRIMARY) == 0 and beats_in(clients, RECOVERY) == 0


def test_once_with_a_failing_stop_command_exits_5(
    clients: ClientFactory, ledger: Ledger, clock: HookedClock, tmp_path: Path
) -> None:
    """A scheduled task's run: the next run reads the fence again and retries the stop."""
    recovered_elsewhere(ledger)
    result = invoke("--once", "--stop-command", stop_command(tmp_path / "stops", succeed_at_attempt=2))
    assert result.exit_code == heartbeat.EXIT_FENCED_STOP_FAILED == 5, result.output
    assert beats_in(clients, PRIMARY) == 0


def test_a_stop_command_that_cannot_start_or_hangs_is_a_failure() -> None:
    missing = heartbeat.run_stop_command(["/nonexistent/jams-stop"], 5)
    assert not missing.ok and "could not be started" in missing.detail
    hung = heartbeat.run_stop_command([sys.executable, "-c", "import time; time.sleep(30)"], 0.2)
    assert not hung.ok and "did not finish within 0.2 s" in hung.detail
    loud = heartbeat.run_stop_command([sys.executable, "-c", "print('[SC] OpenService FAILED 1060'); exit(2)"], 5)
    assert (loud.ok, loud.detail) == (False, "exit 2: [SC] OpenService FAILED 1060")
    garbled = heartbeat.run_stop_command([sys.executable, "-c", "import sys; sys.stdout.buffer.write(b'ok \\xff')"], 5)
    assert garbled.ok and garbled.detail.startswith("exit 0: ok ")  # another code page is no error


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--stop-command", ""], "--stop-command '': the stop command is empty"),
        (["--stop-command", "'unclosed"], "No closing quotation"),
        (["--ledger-table", "a b"], "--ledger-table 'a b' is not a DynamoDB table name"),
        (["--stop-timeout", "0"], "1<=x<=3600"),
    ],
)
def test_bad_self_fence_options_exit_2(args: list[str], message: str) -> None:
    result = invoke("--once", *args)
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())


# ---------------------------------------------------------------------------------------- documentation


def test_readme_and_help_agree_on_self_fencing() -> None:
    help_text = " ".join(CliRunner().invoke(main, ["heartbeat", "--help"]).output.split())
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Heartbeats from the JAMS hosts", 1)[1].split("\n## ", 1)[0]
    for option in ("--stop-command", "--stop-timeout", "--ledger-table", "--max-beats"):
        assert option in help_text and option in section, option
    assert heartbeat.DEFAULT_STOP_COMMAND in " ".join(section.split())
    for code, meaning in ((4, "recovered elsewhere"), (5, "stop command failed")):
        assert f"{code} " in help_text and f"`{code}`" in section
        assert meaning in help_text.lower() and meaning in section.lower()
    assert "fence#<env>" in help_text and "fence#<env>" in section
