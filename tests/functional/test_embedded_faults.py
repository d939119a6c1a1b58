"""Scenario faults in the embedded AWS: the first `count` matching API calls fail as AWS fails them, all
attempts included (the embedded factory retries: 2 attempts a call), in their region and operation only.

botocore's back-off sleeps are recorded instead of slept (tests.faults.harness.fast_retries): the retry
decisions stay botocore's, and the recorded sleeps show the retries really happened.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from chalicelib.aws import ClientFactory, error_code, region_unanswered
from chalicelib.clock import FakeClock
from jamsdr.embedded import EmbeddedAws
from jamsdr.faults import Fault, FaultInjector, expected_error
from jamsdr.scenario import ScenarioFault
from tests.conftest import PRIMARY, RECOVERY
from tests.faults.harness import fast_retries

ATTEMPTS = 2  # EmbeddedAws(fast_retries=True): total_max_attempts


@pytest.fixture
def aws(embedded: EmbeddedAws) -> Iterator[EmbeddedAws]:
    """The embedded AWS, with botocore's back-off recorded, and no fault left armed for the next test."""
    with fast_retries():
        yield embedded
    embedded.fault_injector.forget()


def arm(aws: EmbeddedAws, *faults: ScenarioFault, clock: FakeClock | None = None) -> None:
    aws.inject_faults(faults, primary_region=PRIMARY, recovery_region=RECOVERY, clock=clock)


def topic(clients: ClientFactory, region: str) -> str:
    return str(clients.client("sns", region).create_topic(Name="faults")["TopicArn"])


def publish(clients: ClientFactory, region: str, arn: str) -> Any:
    return clients.client("sns", region).publish(TopicArn=arn, Message="beat")


def outcome(call: Callable[[], Any]) -> BaseException | None:
    try:
        call()
    except (ClientError, EndpointConnectionError) as exc:
        return exc
    return None


def code_of(call: Callable[[], Any]) -> str:
    """The error code the product reads from the call (chalicelib.aws.error_code), or "ok"."""
    exc = outcome(call)
    return "ok" if exc is None else error_code(exc)


# ----------------------------------------------------------------------------------------- counting


@pytest.mark.parametrize("error", ["throttle", "5xx", "connection"])
def test_count_2_fails_exactly_the_first_two_calls_with_all_their_attempts(aws: EmbeddedAws, error: str) -> None:
    assert aws.clients is not None
    arn = topic(aws.clients, PRIMARY)
    arm(aws, ScenarioFault("sns", "primary", "Publish", error, 2))

    with fast_retries() as slept:
        first, second = outcome(lambda: publish(aws.clients, PRIMARY, arn)), outcome(
            lambda: publish(aws.clients, PRIMARY, arn))
        third = publish(aws.clients, PRIMARY, arn)

    assert third["MessageId"]
    assert len(slept) == 2 * (ATTEMPTS - 1), "botocore retried each failed call"
    for exc in (first, second):
        assert exc is not None
        if error == "connection":
            assert isinstance(exc, EndpointConnectionError)
            assert str(exc.kwargs["endpoint_url"]).startswith(aws.endpoint)  # the real endpoint's URL
        else:
            assert isinstance(exc, ClientError)
            status, code = expected_error("sns", error)
            assert (exc.response["ResponseMetadata"]["HTTPStatusCode"], error_code(exc)) == (status, code)
            assert exc.response["ResponseMetadata"]["RetryAttempts"] == ATTEMPTS - 1
            assert exc.response["ResponseMetadata"]["MaxAttemptsReached"] is True
    assert [(f.service, f.region, f.operation, f.error) for f in aws.injected_faults] == [
        ("sns", PRIMARY, "Publish", error)] * 2
    assert aws.fault_injector.failed_attempts == 2 * ATTEMPTS
    assert aws.fault_injector.remaining()[0][1] == 0


def test_faults_add_up_in_order_and_a_call_takes_the_first_with_calls_left(aws: EmbeddedAws) -> None:
    assert aws.clients is not None
    arn = topic(aws.clients, PRIMARY)
    arm(aws, ScenarioFault("sns", "primary", "Publish", "throttle", 1),
        ScenarioFault("sns", "primary", "Publish", "5xx", 1))

    codes = [code_of(lambda: publish(aws.clients, PRIMARY, arn)) for _ in range(3)]

    assert codes == ["Throttling", "ServiceUnavailable", "ok"]


# ----------------------------------------------------------------------------------------- matching


def test_a_fault_hits_only_its_region_and_operation(aws: EmbeddedAws) -> None:
    assert aws.clients is not None
    primary_arn, recovery_arn = topic(aws.clients, PRIMARY), topic(aws.clients, RECOVERY)
    arm(aws, ScenarioFault("sns", "primary", "Publish", "5xx", 1))

    assert publish(aws.clients, RECOVERY, recovery_arn)["MessageId"]  # same operation, other region
    assert aws.clients.client("sns", PRIMARY).list_topics()["Topics"]  # same region, other operation
    assert aws.clients.client("cloudformation", PRIMARY).list_stacks()  # other service
    assert aws.injected_faults == ()

    assert code_of(lambda: publish(aws.clients, PRIMARY, primary_arn)) == "ServiceUnavailable"
    assert code_of(lambda: publish(aws.clients, PRIMARY, primary_arn)) == "ok"


def test_a_region_recreated_after_a_fault_is_armed_is_still_faulted(aws: EmbeddedAws) -> None:
    """ClientFactory drops a region's clients when its endpoint changes; the new ones carry the hooks."""
    assert aws.clients is not None
    arn = topic(aws.clients, PRIMARY)
    arm(aws, ScenarioFault("sns", "primary", "Publish", "throttle", 1))
    aws.take_region_down(PRIMARY)
    aws.bring_region_up(PRIMARY)

    assert code_of(lambda: publish(aws.clients, PRIMARY, arn)) == "Throttling"


def test_concurrent_calls_fail_exactly_count_times(aws: EmbeddedAws) -> None:
    assert aws.clients is not None
    arn = topic(aws.clients, PRIMARY)
    arm(aws, ScenarioFault("sns", "primary", "Publish", "throttle", 5))
    results: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(3):
            code = code_of(lambda: publish(aws.clients, PRIMARY, arn))
            with lock:
                results.append(code)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(results) == ["Throttling"] * 5 + ["ok"] * 19
    assert len(aws.injected_faults) == 5
    assert aws.fault_injector.failed_attempts == 5 * ATTEMPTS


# ------------------------------------------------------------------------------ errors as AWS's own

# One call of each wire protocol jams-dr's clients use, made against an empty world.
CALLS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "query (sns)": ("sns", lambda c: c.list_topics()),
    "query (rds)": ("rds", lambda c: c.describe_db_snapshots()),
    "ec2": ("ec2", lambda c: c.describe_vpcs()),
    "json (dynamodb)": ("dynamodb", lambda c: c.list_tables()),
    "cloudwatch (json, query codes)": ("cloudwatch", lambda c: c.list_metrics()),
    "rest-xml (s3)": ("s3", lambda c: c.list_buckets()),
    "rest-xml (route53)": ("route53", lambda c: c.list_hosted_zones()),
    "rest-json (lambda)": ("lambda", lambda c: c.list_functions()),
}
OPERATIONS = {"sns": "ListTopics", "rds": "DescribeDBSnapshots", "ec2": "DescribeVpcs", "dynamodb": "ListTables",
              "cloudwatch": "ListMetrics", "s3": "ListBuckets", "route53": "ListHostedZones",
              "lambda": "ListFunctions"}


@pytest.mark.parametrize("error", ["throttle", "5xx", "connection"])
@pytest.mark.parametrize(("service", "call"), CALLS.values(), ids=list(CALLS))
def test_errors_read_as_aws_errors_and_only_5xx_and_connection_as_an_unanswered_region(
    aws: EmbeddedAws, service: str, call: Callable[[Any], Any], error: str
) -> None:
    assert aws.clients is not None
    client = aws.clients.client(service, PRIMARY)
    arm(aws, ScenarioFault(service, "primary", OPERATIONS[service], error, 1))

    exc = outcome(lambda: call(client))

    assert exc is not None, "the armed call succeeded"
    if error == "connection":
        assert error_code(exc) == "Unreachable"
    else:
        status, code = expected_error(service, error)
        assert isinstance(exc, ClientError)
        assert (exc.response["ResponseMetadata"]["HTTPStatusCode"], error_code(exc)) == (status, code)
    assert region_unanswered(exc) is (error != "throttle")
    call(client)  # count 1: the next call answers


def test_json_services_throttle_with_throttling_exception_and_query_services_with_throttling() -> None:
    assert expected_error("dynamodb", "throttle") == (400, "ThrottlingException")
    assert expected_error("kms", "throttle") == (400, "ThrottlingException")
    assert expected_error("sns", "throttle") == (400, "Throttling")
    assert expected_error("cloudwatch", "throttle") == (400, "Throttling")  # awsQueryCompatible
    assert expected_error("sns", "5xx") == (503, "ServiceUnavailable")


# ----------------------------------------------------------------------------------------- monitoring


def get_metric_data(clients: ClientFactory, region: str) -> Any:
    now = datetime.now(UTC)
    query = {"Id": "beats", "MetricStat": {"Metric": {"Namespace": "JAMS", "MetricName": "Heartbeat"},
                                           "Period": 60, "Stat": "SampleCount"}}
    return clients.client("cloudwatch", region).get_metric_data(
        MetricDataQueries=[query], StartTime=now - timedelta(minutes=5), EndTime=now)


def get_metric_statistics(clients: ClientFactory, region: str) -> Any:
    now = datetime.now(UTC)
    return clients.client("cloudwatch", region).get_metric_statistics(
        Namespace="JAMS", MetricName="Heartbeat", StartTime=now - timedelta(minutes=5), EndTime=now, Period=60,
        Statistics=["SampleCount"])


def list_metrics(clients: ClientFactory, region: str) -> Any:
    return clients.client("cloudwatch", region).list_metrics(Namespace="JAMS")


def put_metric_data(clients: ClientFactory, region: str) -> Any:
    return clients.client("cloudwatch", region).put_metric_data(
        Namespace="JAMS", MetricData=[{"MetricName": "Heartbeat", "Value": 1.0, "Unit": "Count"}])


READS = [get_metric_data, get_metric_statistics, list_metrics]


def test_fail_monitoring_refuses_the_metric_reads_of_its_region_only_until_cleared(aws: EmbeddedAws) -> None:
    assert aws.clients is not None
    clock = FakeClock()
    aws.fail_monitoring(PRIMARY, clock=clock)

    for _ in range(2):  # unlimited: every call, not the first few
        for read in READS:
            exc = outcome(lambda read=read: read(aws.clients, PRIMARY))
            assert isinstance(exc, EndpointConnectionError), read.__name__
            assert region_unanswered(exc)
    put_metric_data(aws.clients, PRIMARY)  # the heartbeats still land
    aws.clients.client("sns", PRIMARY).list_topics()  # every other API answers
    for read in READS:
        read(aws.clients, RECOVERY)  # the other region's monitoring works
    assert [(f.operation, f.region, f.error, f.at) for f in aws.injected_faults] == [
        (read, PRIMARY, "connection", clock.now())
        for read in ("GetMetricData", "GetMetricStatistics", "ListMetrics") * 2]

    aws.clear_faults()

    assert list_metrics(aws.clients, PRIMARY)["Metrics"]  # the beat put above
    get_metric_data(aws.clients, PRIMARY)
    assert len(aws.injected_faults) == 6, "clearing disarms; the record stays for the report"


def test_paginated_metric_reads_fail_per_page_call(aws: EmbeddedAws) -> None:
    """The watcher reads heartbeats through a paginator: each page is one API call."""
    assert aws.clients is not None
    aws.fail_monitoring(PRIMARY)
    paginator = aws.clients.client("cloudwatch", PRIMARY).get_paginator("list_metrics")

    with pytest.raises(EndpointConnectionError):
        list(paginator.paginate(Namespace="JAMS"))


# ----------------------------------------------------------------------------------------- disarming


def test_clear_faults_disarms_counted_faults_and_reset_forgets_them(aws: EmbeddedAws) -> None:
    assert aws.clients is not None
    arn = topic(aws.clients, PRIMARY)
    arm(aws, ScenarioFault("sns", "primary", "Publish", "connection", 5))
    assert isinstance(outcome(lambda: publish(aws.clients, PRIMARY, arn)), EndpointConnectionError)

    aws.clear_faults()

    assert publish(aws.clients, PRIMARY, arn)["MessageId"]
    assert aws.fault_injector.remaining() == []
    assert len(aws.injected_faults) == 1

    arm(aws, ScenarioFault("sns", "primary", "Publish", "connection", 5))
    aws.reset()

    assert aws.injected_faults == ()
    assert aws.fault_injector.remaining() == []
    aws.clients.client("sns", PRIMARY).list_topics()


def test_an_uninstalled_injector_leaves_present_and_future_clients_alone(aws: EmbeddedAws) -> None:
    factory = ClientFactory(endpoint_url=aws.endpoint, max_attempts=1)
    injector = FaultInjector()
    injector.install(factory)
    injector.arm([Fault("sns", PRIMARY, "ListTopics", "5xx"), Fault("sqs", PRIMARY, "ListQueues", "5xx")])
    present = factory.client("sns", PRIMARY)
    assert code_of(present.list_topics) == "ServiceUnavailable"

    injector.uninstall()

    assert code_of(present.list_topics) == "ok"
    assert code_of(factory.client("sqs", PRIMARY).list_queues) == "ok"
    assert len(injector.injected) == 1
