"""The embedded AWS takes the global control planes down with us-east-1.

AWS fact: IAM's control plane, AWS Organizations' and Route 53's (its whole API: record and health-check
changes, and reads) are in us-east-1 for the aws partition, whatever region a client is made for; their
data planes (authentication; DNS answers and health checks) keep working without it. Sources: IAM User
Guide, "Resilience in AWS Identity and Access Management"
(https://docs.aws.amazon.com/IAM/latest/UserGuide/disaster-recovery-resiliency.html); Route 53 Developer
Guide, "Resilience in Amazon Route 53"
(https://docs.aws.amazon.com/Route53/latest/DeveloperGuide/disaster-recovery-resiliency.html); AWS Fault
Isolation Boundaries, "Global services"
(https://docs.aws.amazon.com/whitepapers/latest/aws-fault-isolation-boundaries/global-services.html).

moto answers these services in every region whatever happens to us-east-1; with us-east-1 down, the
embedded AWS refuses their connections as it refuses the rest of the region.
"""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import EndpointConnectionError

from chalicelib.aws import ClientFactory, is_unreachable
from jamsdr.embedded import EmbeddedAws
from jamsdr.faults import data_plane_emulation
from jamsdr.traffic_emulation import Resolver
from tests.conftest import PRIMARY, RECOVERY

ZONE = "planes.example.internal"


def _global_calls(clients: ClientFactory, region: str) -> dict[str, Any]:
    """One call of each global service, through clients made for ``region``."""
    route53 = clients.client("route53", region)
    iam = clients.client("iam", region)
    organizations = clients.client("organizations", region)
    return {
        "route53 ListHostedZones": route53.list_hosted_zones,
        "route53 CreateHealthCheck": lambda: route53.create_health_check(
            CallerReference="planes", HealthCheckConfig={"Type": "TCP", "IPAddress": "192.0.2.10", "Port": 80}),
        "iam GetInstanceProfile": lambda: iam.get_instance_profile(InstanceProfileName="nope"),
        "iam CreateRole": lambda: iam.create_role(RoleName="planes", AssumeRolePolicyDocument="{}"),
        "organizations DescribeOrganization": organizations.describe_organization,
    }


def test_us_east_1_down_refuses_route53_iam_and_organizations_from_any_region(embedded: EmbeddedAws,
                                                                                clients: ClientFactory) -> None:
    assert PRIMARY == "us-east-1"
    embedded.take_region_down(PRIMARY)
    for region in (RECOVERY, PRIMARY):
        for name, call in _global_calls(clients, region).items():
            with pytest.raises(EndpointConnectionError) as refused:
                call()
            assert is_unreachable(refused.value), name
    # The recovery region's own APIs still answer, and the refusals are the outage, not injected faults.
    assert clients.client("sns", RECOVERY).list_topics()["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert embedded.injected_faults == ()
    embedded.clear_faults()  # faults end with an incident; the region's outage does not
    with pytest.raises(EndpointConnectionError):
        clients.client("route53", RECOVERY).list_hosted_zones()

    embedded.bring_region_up(PRIMARY)
    assert clients.client("route53", RECOVERY).list_hosted_zones()["HostedZones"] == []
    assert clients.client("iam", RECOVERY).list_roles()["ResponseMetadata"]["HTTPStatusCode"] == 200


def test_another_region_down_leaves_the_global_control_planes_up(embedded: EmbeddedAws,
                                                                  clients: ClientFactory) -> None:
    embedded.take_region_down(RECOVERY)
    try:
        assert clients.client("route53", PRIMARY).list_hosted_zones()["ResponseMetadata"]["HTTPStatusCode"] == 200
        with pytest.raises(EndpointConnectionError):
            clients.client("sns", RECOVERY).list_topics()
    finally:
        embedded.bring_region_up(RECOVERY)


def test_dns_answers_survive_us_east_1_down(embedded: EmbeddedAws, clients: ClientFactory) -> None:
    """Route 53's data plane answers without its control plane: the embedded resolver (which reads the
    records through the API to compute the answer) runs as data-plane emulation."""
    route53 = clients.client("route53", RECOVERY)
    zone_id = route53.create_hosted_zone(Name=ZONE, CallerReference="planes")["HostedZone"]["Id"].split("/")[-1]
    route53.change_resource_record_sets(HostedZoneId=zone_id, ChangeBatch={"Changes": [{
        "Action": "UPSERT", "ResourceRecordSet": {"Name": f"jams.{ZONE}.", "Type": "CNAME", "TTL": 60,
                                                  "ResourceRecords": [{"Value": "jams.us-west-2.example"}]}}]})
    embedded.take_region_down(PRIMARY)
    resolver = Resolver(clients, zone_id, region=RECOVERY)
    assert resolver.answer(f"jams.{ZONE}") == "jams.us-west-2.example"
    with pytest.raises(EndpointConnectionError):  # the same read as an API call of the product: refused
        route53.list_resource_record_sets(HostedZoneId=zone_id)
    with data_plane_emulation():  # what the resolver wraps its reads in
        assert route53.list_resource_record_sets(HostedZoneId=zone_id)["ResourceRecordSets"]
