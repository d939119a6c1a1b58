from __future__ import annotations

import importlib

import pytest
from botocore.exceptions import EndpointConnectionError

from chalicelib import aws
from chalicelib.aws import ClientFactory, closed_loopback_endpoint, error_code, is_unreachable


def test_no_client_at_import_time() -> None:
    module = importlib.reload(aws)
    assert module._factory is None


def test_clients_are_cached_per_service_and_region() -> None:
    factory = ClientFactory(endpoint_url="http://127.0.0.1:1")
    rds_east = factory.client("rds", "us-east-1")
    assert factory.client("rds", "us-east-1") is rds_east
    assert factory.client("rds", "us-west-2") is not rds_east
    assert factory.client("ec2", "us-east-1") is not rds_east
    assert rds_east.meta.config.retries["total_max_attempts"] == aws.DEFAULT_MAX_ATTEMPTS
    assert rds_east.meta.config.retries["mode"] == "standard"
    assert rds_east.meta.config.connect_timeout <= 5


def test_aws_endpoint_url_is_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:4566")
    client = ClientFactory().client("sts", "us-east-1")
    assert client.meta.endpoint_url == "http://127.0.0.1:4566"


def test_a_region_taken_down_refuses_calls_and_comes_back(clients: ClientFactory) -> None:
    up = clients.client("ec2", "us-east-1")
    assert up.describe_vpcs()["Vpcs"] is not None
    clients.set_region_endpoint("us-east-1", closed_loopback_endpoint())
    down = clients.client("ec2", "us-east-1")
    assert down is not up
    with pytest.raises(EndpointConnectionError) as caught:
        down.describe_vpcs()
    assert is_unreachable(caught.value) and error_code(caught.value) == "Unreachable"
    # The other region is untouched.
    assert clients.client("ec2", "us-west-2").describe_vpcs()["Vpcs"] is not None
    clients.set_region_endpoint("us-east-1", None)
    assert clients.client("ec2", "us-east-1").describe_vpcs()["Vpcs"] is not None


def test_hooks_reach_existing_and_new_clients(clients: ClientFactory) -> None:
    seen: list[str] = []
    clients.client("sts", "us-east-1")
    clients.register_hook("before-call", lambda model, **_: seen.append(model.name))
    clients.client("sts", "us-east-1").get_caller_identity()
    clients.client("sts", "us-west-2").get_caller_identity()
    assert seen.count("GetCallerIdentity") >= 2


def _client_error(code: str, status: int) -> Exception:
    from botocore.exceptions import ClientError

    return ClientError({"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
                       "Op")


def test_region_unanswered_tells_a_failing_region_from_throttling_and_refusals() -> None:
    from botocore.exceptions import EndpointConnectionError

    from chalicelib.aws import region_unanswered

    assert region_unanswered(EndpointConnectionError(endpoint_url="https://ec2.us-east-1.amazonaws.com"))
    assert region_unanswered(_client_error("ServiceUnavailable", 503))
    assert region_unanswered(_client_error("InternalError", 500))
    # EC2 throttles with HTTP 503: the region answers, it only asks us to slow down.
    assert not region_unanswered(_client_error("RequestLimitExceeded", 503))
    assert not region_unanswered(_client_error("Throttling", 400))
    assert not region_unanswered(_client_error("UnauthorizedOperation", 403))
