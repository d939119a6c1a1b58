"""The harness itself: every forged error parses, in each service's own protocol, to the code intended.

A fault that botocore parsed into something else (an unknown code, a parse error) would test nothing;
the flows also check every injected attempt as it arrives (``Injector.problems``).
"""

from __future__ import annotations

import pytest
from botocore.parsers import create_parser

from chalicelib.aws import ClientFactory
from tests.faults.harness import Kind, expected_error, forged_error

MODELS = ClientFactory(endpoint_url="http://127.0.0.1:1")

# Service, an operation it is called with by jams-dr, and the wire protocols botocore may use for it.
CALLS = [
    ("rds", "CreateDBSnapshot", ["query"]),
    ("cloudformation", "CreateStack", ["query"]),
    ("ec2", "StopInstances", ["ec2"]),
    ("dynamodb", "UpdateItem", ["json"]),
    ("s3", "GetObject", ["rest-xml"]),
    ("route53", "ChangeResourceRecordSets", ["rest-xml"]),
    ("sns", "Publish", ["query"]),
    ("cloudwatch", "GetMetricData", ["json", "smithy-rpc-v2-cbor", "query"]),
    ("elbv2", "DescribeTargetHealth", ["query"]),
    ("lambda", "Invoke", ["rest-json"]),
]


@pytest.mark.parametrize("kind", [Kind.THROTTLE, Kind.SERVER])
@pytest.mark.parametrize(("service", "operation", "protocols"), CALLS)
def test_forged_errors_parse_to_the_intended_code(service: str, operation: str, protocols: list[str],
                                                  kind: Kind) -> None:
    client = MODELS.client(service, "us-east-1")  # never called: only its model is used
    model = client.meta.service_model.operation_model(operation)
    status, code = expected_error(service, kind)
    for protocol in protocols:
        response = forged_error("http://127.0.0.1:1/", service, protocol, kind)
        parsed = create_parser(protocol).parse(
            {"status_code": response.status_code, "headers": response.headers, "body": response.content},
            model.output_shape)
        assert (response.status_code, parsed["Error"]["Code"]) == (status, code), protocol
