"""The fault suite's world: built once per worker (package fixture), put back to a baseline per test.

``restore`` undoes what the three flows leave behind, with plain API calls outside any recording:
ledger items, our snapshots and the pin, application/drill stacks in the recovery region, the fence
of the primary schedulers (state, security groups, tags, quarantine group) and the switched DNS name.
"""

from __future__ import annotations

from typing import Any

from chalicelib import traffic
from chalicelib.aws import ClientFactory
from chalicelib.settings import Settings
from chalicelib.stacks import describe_stack, parameters_of, update_pin
from chalicelib.tags import TAG_EPOCH, TAG_FENCED_BY, TAG_ORIGINAL_GROUPS
from chalicelib.workflow.steps.common import scheduler_instances
from chalicelib.workflow.steps.fence import quarantine_group_name
from jamsdr.embedded import World

KEEP_STACKS = ("-standby", "-dr-support", "-jams-dr-traffic")


def clear_ledger(clients: ClientFactory, settings: Settings, *, prefixes: tuple[str, ...] = ()) -> None:
    """Delete every ledger item (or those whose pk starts with one of ``prefixes``)."""
    ddb = clients.client("dynamodb", settings.recovery_region)
    table = settings.ledger_table_name
    for page in ddb.get_paginator("scan").paginate(TableName=table, ProjectionExpression="pk"):
        for item in page.get("Items", []):
            if not prefixes or item["pk"]["S"].startswith(prefixes):
                ddb.delete_item(TableName=table, Key={"pk": item["pk"]})


def clear_snapshots(clients: ClientFactory, settings: Settings) -> None:
    for region in (settings.primary_region, settings.recovery_region):
        rds = clients.client("rds", region)
        for snapshot in rds.describe_db_snapshots(SnapshotType="manual")["DBSnapshots"]:
            rds.delete_db_snapshot(DBSnapshotIdentifier=snapshot["DBSnapshotIdentifier"])
    cfn = clients.client("cloudformation", settings.recovery_region)
    standby = describe_stack(cfn, settings.standby_stack_name)
    assert standby is not None, "the standby stack is gone: the world is broken"
    if parameters_of(standby).get("DBSnapshotIdentifier"):
        update_pin(cfn, standby, "")


def delete_recovery_stacks(world: World, clients: ClientFactory) -> None:
    settings = world.settings
    cfn = clients.client("cloudformation", settings.recovery_region)
    for page in cfn.get_paginator("describe_stacks").paginate():
        for stack in page.get("Stacks", []):
            name = str(stack["StackName"])
            if stack["StackStatus"] != "DELETE_COMPLETE" and not name.endswith(KEEP_STACKS):
                cfn.delete_stack(StackName=stack["StackId"])
    # moto 5.2.5 leaves an application stack's NAT routes in the network stack's route tables when the
    # stack is deleted (CloudFormation removes them): remove them, or the next stack cannot add its own.
    ec2 = clients.client("ec2", settings.recovery_region)
    tables = [world.standby[k] for k in ("PrivateRouteTable1Id", "PrivateRouteTable2Id") if world.standby.get(k)]
    for table in ec2.describe_route_tables(RouteTableIds=tables)["RouteTables"] if tables else []:
        if any(r.get("DestinationCidrBlock") == "0.0.0.0/0" for r in table["Routes"]):
            ec2.delete_route(RouteTableId=table["RouteTableId"], DestinationCidrBlock="0.0.0.0/0")


def unfence_primary(clients: ClientFactory, settings: Settings) -> None:
    """Schedulers running again in their own groups, without fence tags; no quarantine group."""
    ec2 = clients.client("ec2", settings.primary_region)
    instances = scheduler_instances(ec2, settings.environment,
                                    states=("pending", "running", "stopping", "stopped"))
    for instance in instances:
        tags = {t["Key"]: t.get("Value", "") for t in instance.get("Tags", [])}
        original = [g for g in tags.get(TAG_ORIGINAL_GROUPS, "").split(",") if g]
        if original:
            ec2.modify_instance_attribute(InstanceId=instance["InstanceId"], Groups=original)
        fence_tags = [{"Key": k} for k in (TAG_FENCED_BY, TAG_EPOCH, TAG_ORIGINAL_GROUPS) if k in tags]
        if fence_tags:
            ec2.delete_tags(Resources=[instance["InstanceId"]], Tags=fence_tags)
    stopped = [i["InstanceId"] for i in instances if i["State"]["Name"] != "running"]
    if stopped:
        ec2.start_instances(InstanceIds=stopped)
    groups = ec2.describe_security_groups(
        Filters=[{"Name": "group-name", "Values": [quarantine_group_name(settings.environment)]}])
    for group in groups["SecurityGroups"]:
        ec2.delete_security_group(GroupId=group["GroupId"])


def switch_back_to_primary(clients: ClientFactory, settings: Settings) -> None:
    """The traffic alarm back to OK (PrimaryServes=1): the stable name answers the primary again."""
    if not (settings.hosted_zone_id and settings.dns_zone_name):
        return
    clients.client("cloudwatch", settings.recovery_region).put_metric_data(
        Namespace=traffic.NAMESPACE, MetricData=[traffic.metric_datum(settings.environment, traffic.PRIMARY_SERVES)])


def restore(world: World, clients: ClientFactory, *, snapshots: bool = True) -> None:
    """Back to the freshly built world (``snapshots=False`` keeps snapshots and the pin)."""
    settings = world.settings
    clear_ledger(clients, settings)
    if snapshots:
        clear_snapshots(clients, settings)
    delete_recovery_stacks(world, clients)
    unfence_primary(clients, settings)
    switch_back_to_primary(clients, settings)


def our_snapshots(clients: ClientFactory, region: str) -> dict[str, dict[str, Any]]:
    """Every manual snapshot of ``region`` by id, with its tags as a dict under ``tags``."""
    rds = clients.client("rds", region)
    found: dict[str, dict[str, Any]] = {}
    for page in rds.get_paginator("describe_db_snapshots").paginate(SnapshotType="manual"):
        for snapshot in page.get("DBSnapshots", []):
            tags = {t["Key"]: t.get("Value", "") for t in snapshot.get("TagList", [])}
            found[str(snapshot["DBSnapshotIdentifier"])] = {**snapshot, "tags": tags}
    return found
