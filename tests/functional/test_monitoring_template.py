"""templates/jams-dr-monitoring.yaml: jams-dr watched by CloudWatch, and kept in step with the app.

Every function of every stage (.chalice/config.json lambda_functions, which `python -m jamsdr.iam --check`
already holds equal to the functions app.py defines) must have its errors and throttles alarm, and every
function app.py schedules its not-running alarm; an alarm naming a function that does not exist fails too.
The template is the only list of alarms, the config and app.py the only lists of functions: nothing here
restates either.

moto (5.2.5) skips AWS::CloudWatch::Alarm in CloudFormation (a warning, no alarm: see the quirks in
tests/functional/test_templates.py), so DescribeAlarms cannot show what the stack made. The alarms are
checked on the template resolved with each stage's parameters (Ref and Fn::Sub, all this template uses);
the moto tests prove the stack creates from the dr-support stack's real topic and that `jams-dr bootstrap`
deploys it, and assert moto's skipping so that a moto which learns alarms is noticed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from click.testing import CliRunner

from chalicelib.aws import ClientFactory, set_factory
from jamsdr.cli import main
from jamsdr.stage import function_name
from tests.functional.test_templates import (  # noqa: F401 - aws is the moto fixture, used by name
    PRIMARY,
    RECOVERY,
    ROOT,
    aws,
    create_stack,
    load,
    resolve,
)

TEMPLATE = "jams-dr-monitoring.yaml"
CONFIG = ROOT / ".chalice" / "config.json"
TOPIC = "arn:aws:sns:us-west-2:123456789012:jams-notifications"
KIND_OF_METRIC = {"Errors": "errors", "Throttles": "throttles", "Invocations": "not-running"}
SECONDS_PER_UNIT = {"minute": 60, "minutes": 60, "hour": 3600, "hours": 3600, "day": 86400, "days": 86400}

pytestmark = [
    # moto announces every resource type it skips: here each alarm (asserted on the template instead).
    pytest.mark.filterwarnings("ignore:Tried to parse AWS:UserWarning"),
]


@dataclass(frozen=True)
class Alarm:
    logical_id: str
    handler: str
    kind: str  # errors | throttles | not-running
    properties: dict[str, Any]


def stage_functions() -> dict[str, set[str]]:
    """Each stage's handlers as `chalice deploy` names them in .chalice/config.json."""
    stages = json.loads(CONFIG.read_text())["stages"]
    return {stage: set(settings.get("lambda_functions", {})) for stage, settings in stages.items()}


def scheduled_intervals() -> dict[str, int]:
    """Seconds between runs of each function app.py schedules."""
    from chalice.app import ScheduledEventConfig, ScheduleExpression

    from app import app

    intervals = {}
    for source in app.event_sources:
        if not isinstance(source, ScheduledEventConfig):
            continue
        expression = source.schedule_expression
        text = expression.to_string() if isinstance(expression, ScheduleExpression) else expression
        rate = re.fullmatch(r"rate\((\d+) (\w+)\)", text)
        # A cron schedule has no single interval: its not-running alarm needs its own thought.
        assert rate, f"{source.name} runs on {text}: give its not-running alarm a period that fits, then this test"
        intervals[source.name] = int(rate.group(1)) * SECONDS_PER_UNIT[rate.group(2)]
    return intervals


def substitute(node: Any, params: Mapping[str, str]) -> Any:
    """Fn::Sub strings with parameter values; a ${Name} that is no parameter raises (KeyError)."""
    if isinstance(node, dict):
        if set(node) == {"Fn::Sub"} and isinstance(node["Fn::Sub"], str):
            return re.sub(r"\$\{([^}]+)\}", lambda m: params[m.group(1)], node["Fn::Sub"])
        return {k: substitute(v, params) for k, v in node.items()}
    if isinstance(node, list):
        return [substitute(v, params) for v in node]
    return node


def alarms(prefix: str, environment: str = "jams", topic: str = TOPIC) -> list[Alarm]:
    """The template's alarms as a stack with these parameters would create them."""
    template = load(TEMPLATE)
    params = {"EnvironmentName": environment, "FunctionNamePrefix": prefix, "TopicArn": topic}
    assert set(template["Parameters"]) == set(params)
    found = []
    for logical_id, resource in template["Resources"].items():
        assert resource["Type"] == "AWS::CloudWatch::Alarm", logical_id
        properties = substitute(resolve(resource["Properties"], {}, params), params)
        (dimension,) = properties["Dimensions"]
        assert dimension["Name"] == "FunctionName", logical_id
        assert dimension["Value"].startswith(prefix), logical_id
        found.append(Alarm(logical_id, dimension["Value"].removeprefix(prefix),
                           KIND_OF_METRIC[properties["MetricName"]], properties))
    return found


def by_kind(found: list[Alarm], kind: str) -> dict[str, Alarm]:
    chosen = [a for a in found if a.kind == kind]
    handlers = [a.handler for a in chosen]
    assert len(handlers) == len(set(handlers)), f"two {kind} alarms on one function: {sorted(handlers)}"
    return {a.handler: a for a in chosen}


def drift(functions: set[str], found: list[Alarm]) -> list[str]:
    """What separates the alarms from the functions a stage deploys (empty: in step)."""
    problems = [f"no {kind} alarm for {handler}"
                for kind in ("errors", "throttles")
                for handler in sorted(functions - set(by_kind(found, kind)))]
    problems += [f"{a.logical_id} alarms on {a.handler}, which the stage does not deploy"
                 for a in found if a.handler not in functions]
    return problems


# ----------------------------------------------------------------------------------- the template


def test_lint_clean_in_both_regions() -> None:
    from cfnlint.api import ConfigMixIn, Runner

    template = str(ROOT / "templates" / TEMPLATE)
    findings = {(m.rule.id, m.rule.severity.lower(), m.message)
                for m in Runner(ConfigMixIn(["--template", template], regions=[PRIMARY, RECOVERY])).run()}
    assert {f for f in findings if f[1] in {"error", "warning"}} == set()


@pytest.mark.parametrize("stage", sorted(stage_functions()))
def test_every_function_of_the_stage_has_errors_and_throttles_alarms_and_no_alarm_names_another(stage: str) -> None:
    assert drift(stage_functions()[stage], alarms(function_name(stage, ""))) == []


def test_errors_and_throttles_fire_on_any_failure_and_notify_the_topic() -> None:
    found = alarms("jams-dr-prod-", environment="jams")
    for kind, metric in (("errors", "Errors"), ("throttles", "Throttles")):
        for handler, alarm in by_kind(found, kind).items():
            p = alarm.properties
            assert p["AlarmName"] == f"jams-jamsdr-{handler}-{kind}"
            assert p["Dimensions"] == [{"Name": "FunctionName", "Value": f"jams-dr-prod-{handler}"}]
            assert (p["Namespace"], p["MetricName"], p["Statistic"]) == ("AWS/Lambda", metric, "Sum")
            assert (p["Period"], p["EvaluationPeriods"]) == (300, 1)
            assert (p["ComparisonOperator"], p["Threshold"]) == ("GreaterThanThreshold", 0)
            # Most functions run only on an event or a command: no data is the normal case.
            assert p["TreatMissingData"] == "notBreaching"
            assert (p["AlarmActions"], p["OKActions"]) == ([TOPIC], [TOPIC])


def test_each_scheduled_function_alarms_when_it_stops_running() -> None:
    intervals = scheduled_intervals()
    assert {"heartbeat_watcher", "snapshot_tick", "execution_sweeper"} <= set(intervals)  # the probe reads app.py
    found = alarms("jams-dr-prod-", environment="jams")
    not_running = by_kind(found, "not-running")
    assert set(not_running) == set(intervals)
    for handler, alarm in not_running.items():
        p = alarm.properties
        assert p["AlarmName"] == f"jams-jamsdr-{handler}-not-running"
        assert (p["Namespace"], p["MetricName"], p["Statistic"]) == ("AWS/Lambda", "Invocations", "Sum")
        assert (p["ComparisonOperator"], p["Threshold"]) == ("LessThanThreshold", 1)
        # A function that no longer runs publishes no Invocations at all: missing data must fire.
        assert p["TreatMissingData"] == "breaching"
        assert p.get("DatapointsToAlarm", p["EvaluationPeriods"]) == p["EvaluationPeriods"]
        # No period shorter than the schedule (an empty one would be normal) and at least three missed
        # runs before paging (one late run must not).
        assert p["Period"] >= intervals[handler], handler
        assert p["Period"] * p["EvaluationPeriods"] >= 3 * intervals[handler], handler
        assert (p["AlarmActions"], p["OKActions"]) == ([TOPIC], [TOPIC])


def test_the_drift_check_sees_a_function_without_alarms_and_an_alarm_without_function() -> None:
    """The stage test above can fail: a handler added to the config, one removed, one alarm deleted."""
    found = alarms("jams-dr-prod-")
    functions = stage_functions()["prod"]
    assert drift(functions | {"new_handler"}, found) == ["no errors alarm for new_handler",
                                                         "no throttles alarm for new_handler"]
    assert drift(functions - {"rds_event"}, found) == [
        "RdsEventErrors alarms on rds_event, which the stage does not deploy",
        "RdsEventThrottles alarms on rds_event, which the stage does not deploy",
    ]
    without = [a for a in found if a.logical_id != "HeartbeatWatcherThrottles"]
    assert drift(functions, without) == ["no throttles alarm for heartbeat_watcher"]


# ----------------------------------------------------------------------------------- under moto


@pytest.mark.usefixtures("aws")
def test_stack_creates_in_the_recovery_region_on_the_support_topic() -> None:
    support = create_stack(RECOVERY, "jams-dr-support", "dr-support.yaml", {"EnvironmentName": "jams"})
    params = {"EnvironmentName": "jams", "FunctionNamePrefix": "jams-dr-prod-", "TopicArn": support["TopicArn"]}
    out = create_stack(RECOVERY, "jams-dr-monitoring", TEMPLATE, params)
    assert out == {"AlarmNamePrefix": "jams-jamsdr-"}
    assert all(a.properties["AlarmActions"] == [support["TopicArn"]] for a in alarms("jams-dr-prod-",
                                                                                       topic=support["TopicArn"]))
    # moto skips AWS::CloudWatch::Alarm. If this fails, moto learnt alarms: assert them from here instead.
    cloudwatch = boto3.client("cloudwatch", region_name=RECOVERY)
    assert cloudwatch.describe_alarms(AlarmNamePrefix=out["AlarmNamePrefix"])["MetricAlarms"] == []


@pytest.fixture
def default_factory() -> Iterator[None]:
    """The CLI's client factory on moto's in-process mock (another test may have left the embedded one)."""
    set_factory(ClientFactory())
    yield
    set_factory(None)


@pytest.mark.usefixtures("aws", "default_factory")
def test_bootstrap_deploys_the_monitoring_stack_for_the_stage(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # the CLI reads .chalice/config.json of the working directory
    result = CliRunner().invoke(main, ["bootstrap", "--stage", "prod", "--yes"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    cfn = boto3.client("cloudformation", region_name=RECOVERY)
    support = {o["OutputKey"]: o["OutputValue"]
               for o in cfn.describe_stacks(StackName="jams-dr-support")["Stacks"][0]["Outputs"]}
    (stack,) = cfn.describe_stacks(StackName="jams-dr-monitoring")["Stacks"]
    assert stack["StackStatus"] == "CREATE_COMPLETE"
    assert {p["ParameterKey"]: p["ParameterValue"] for p in stack["Parameters"]} == {
        "EnvironmentName": "jams",
        "FunctionNamePrefix": "jams-dr-prod-",
        "TopicArn": support["TopicArn"],
    }
    # The functions run in the recovery region only: nothing of the monitoring in the primary one.
    primary = boto3.client("cloudformation", region_name=PRIMARY)
    assert [s["StackName"] for s in primary.describe_stacks()["Stacks"]] == ["jams-event-forwarding"]
