"""RDS facts moto drops, restored in the embedded AWS.

The recovery point is only worth something if the database restored from it is the one the chain
chose, and a SQL Server TDE database restores only with its option group. moto 5.2.5 loses the facts
that prove both (each checked against plain moto by tests/functional/test_rds_fidelity.py):

- ``AWS::RDS::DBInstance`` ``OptionGroupName``: ignored by moto's CloudFormation handler, so the
  instance reports ``default:<engine>-<version>``. AWS: "The option group that this DB instance is
  associated with" (CloudFormation template reference, AWS::RDS::DBInstance, OptionGroupName); an
  option group that does not exist in the region fails the resource (OptionGroupNotFoundFault).
- ``DBSnapshot.OptionGroupName``: never reported. AWS: "Provides the option group name for the DB
  snapshot" (RDS API reference, DBSnapshot); a snapshot records its instance's group.
- ``CopyDBSnapshot`` ``OptionGroupName``: ignored. AWS: "The name of an option group to associate with
  the copy of the snapshot. Specify this option if you are copying a snapshot from one AWS Region to
  another, and your DB instance uses a nondefault option group" (RDS API reference, CopyDBSnapshot).
- ``AWS::RDS::DBInstance`` ``DBSnapshotIdentifier``: ignored; moto creates an empty instance from the
  template's properties. AWS: the handler calls RestoreDBInstanceFromDBSnapshot (template reference,
  DBSnapshotIdentifier; aws-cloudformation-resource-providers-rds), so the instance takes the
  snapshot's encryption and key, storage, master user name, engine version and (unless the template
  names one) option group (RDS API reference, RestoreDBInstanceFromDBSnapshot: "created from the source
  database restore point with most of the source's original configuration").
- The restore leaves no trace. AWS records a DB instance event "Restored from snapshot <name>"
  (RDS-EVENT-0043, category restoration) for a snapshot restore and "Restored from DB instance <source>
  to <time>" (RDS-EVENT-0019) for a point-in-time restore (RDS User Guide, "Amazon RDS event categories
  and event messages"); DescribeEvents answers them with SourceType ``db-instance`` and the restored
  instance as SourceIdentifier (observed: remind101/dbsnap-verify's SNS fixture, "Event Source":
  "db-instance", RDS-EVENT-0043, "Restored from snapshot <copy id>"; a console restore, "Restored from
  DB instance rds1 to 2022-11-14 15:12:00.05"). The embedded AWS records them, instead of moto's "DB
  instance created" (RDS-EVENT-0005), which a restore does not emit.
- The same resource with ``SourceDBInstanceAutomatedBackupsArn`` and ``RestoreTime`` or
  ``UseLatestRestorableTime`` (a point-in-time restore from replicated automated backups, template
  reference): moto ignores all three; the embedded AWS takes encryption, key, storage, master user and
  engine from the replicated backups (jamsdr/pitr_fidelity.py; unknown backups fail the resource) and
  records the RDS-EVENT-0019 restore with their source instance and the time restored to
  (``RestoreTime``, else the backups' latest restorable time).

- A restore takes time. moto makes the restored instance ``available`` and its stack ``CREATE_COMPLETE``
  inside CreateStack. AWS: a restore "Creates a new DB instance from a DB snapshot" (RDS API reference,
  RestoreDBInstanceFromDBSnapshot; RDS User Guide, "Restoring to a DB instance",
  https://docs.aws.amazon.com/AmazonRDS/latest/UserGuide/USER_RestoreFromSnapshot.html), which reports
  ``creating`` until it is ``available`` (RDS User Guide, "Viewing Amazon RDS DB instance status",
  https://docs.aws.amazon.com/AmazonRDS/latest/UserGuide/accessing-monitoring.html); a SQL Server restore
  often takes tens of minutes. Meanwhile the stack is ``CREATE_IN_PROGRESS``, ``CREATE_COMPLETE`` only
  once every resource is made (CloudFormation User Guide, "Stack status codes",
  https://docs.aws.amazon.com/AWSCloudFormation/latest/UserGuide/view-stack-events.html), and DescribeStacks
  reports its ``Outputs`` only once it is complete (observed behaviour; not stated in the API reference). With
  ``set_restore_duration`` the embedded AWS keeps a restoring stack and its instance so for that long, lazily
  from the clock on each read: DescribeDBInstances says ``creating``, DescribeStacks and ListStacks
  ``CREATE_IN_PROGRESS`` without outputs, DescribeStackEvents holds back the stack's ``CREATE_COMPLETE`` and
  DescribeEvents the restore event (RDS emits it when the restore finishes); both are dated at the end.
  Deleting the stack meanwhile deletes the instance, and the ``CREATE_COMPLETE`` that never happened is
  dropped. The default (None) is moto's instant restore. Only CreateStack's path is timed (the recovery
  chain's); a CREATE change set restores nothing in jams-dr. Not modelled: the instance's ``Endpoint``
  (absent while ``creating`` in AWS) and the stack's SNS notification of ``CREATE_COMPLETE`` (sent at once).

- ``AWS::RDS::OptionGroup``: skipped by moto's CloudFormation ("No Moto CloudFormation support"), so a
  network stack's option group never exists and a database naming it cannot be made. The embedded AWS
  creates it (name, engine, major version, options by name) and deletes it with its stack.

Installed once per process, after network_fidelity (which wraps the same DBInstance handler for
``VPCSecurityGroups``: this wraps whatever is installed, never replaces it). ``plain_moto()`` turns these
patches off for a block, so a test can show each gap on moto itself.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from jamsdr.moto_models import register_model

OPTION_GROUP_TYPE = "AWS::RDS::OptionGroup"
# CloudFormation's RDS handler names these; moto reads none of them.
SNAPSHOT_PROPERTY = "DBSnapshotIdentifier"
BACKUPS_PROPERTY = "SourceDBInstanceAutomatedBackupsArn"
RESTORE_TIME_PROPERTY = "RestoreTime"
LATEST_PROPERTY = "UseLatestRestorableTime"
# RDS User Guide, "Amazon RDS event categories and event messages" (DB instance, restoration).
SNAPSHOT_RESTORE_MESSAGE = "Restored from snapshot {snapshot}"
PITR_RESTORE_MESSAGE = "Restored from DB instance {source} to {time}"
RESTORATION = "restoration"
# moto's create event for every instance; a restored instance has the restore event instead.
_CREATED_MESSAGE = "DB instance created"

# Markers on moto's objects, each a datetime: when a restoring instance becomes available, when the stack
# that holds restoring instances completes, and before when an event is not reported.
_RESTORED_AT = "_jamsdr_restored_at"
_STACK_READY_AT = "_jamsdr_stack_ready_at"
_SHOWN_FROM = "_jamsdr_shown_from"
_STACK_TYPE = "AWS::CloudFormation::Stack"
_CREATE_COMPLETE = "CREATE_COMPLETE"

_installed = False
_enabled = True
_restore_duration: timedelta | None = None
_clock: Callable[[], datetime] | None = None
# moto's server answers each request on its own thread: a stack's completion and its events are read and
# written under this lock so that no reader sees the CREATE_COMPLETE event before it is held back.
_lock = threading.Lock()


def install() -> None:
    """Patch moto's RDS models (idempotent)."""
    global _installed  # noqa: PLW0603 - one patch per process, like moto's own backends
    if _installed:
        return
    _option_group_resource()
    _instance_from_cloudformation()
    _snapshot_option_group()
    _copy_option_group()
    _restores_take_time()
    _installed = True


def set_restore_duration(duration: timedelta | None) -> None:
    """How long a restore made by CloudFormation takes from now on (None or zero: at once, as in moto).
    A drill compresses it, so that the chain's wait for the stack is exercised without real minutes."""
    global _restore_duration  # noqa: PLW0603 - process-wide, like the moto server it configures
    _restore_duration = duration if duration is not None and duration > timedelta(0) else None


def set_clock(now: Callable[[], datetime] | None) -> None:
    """The time the restore model reads (None: the real time)."""
    global _clock  # noqa: PLW0603 - process-wide, like the moto server it configures
    _clock = now


def _now() -> datetime:
    return (_clock or (lambda: datetime.now(UTC)))()


def _pending(obj: Any, marker: str) -> bool:
    """Whether the moment ``marker`` records on ``obj`` is still to come."""
    moment = _marker(obj, marker)
    return moment is not None and _now() < moment


@contextmanager
def plain_moto() -> Iterator[None]:
    """moto's own behaviour for the block (the patches stay installed but pass through)."""
    global _enabled  # noqa: PLW0603 - process-wide, like the patches themselves
    previous, _enabled = _enabled, False
    try:
        yield
    finally:
        _enabled = previous


def restore_time_text(moment: datetime) -> str:
    """A time as RDS writes it in RDS-EVENT-0019: UTC, seconds, fraction only when there is one."""
    text = moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    if moment.microsecond:
        text += f".{moment.microsecond:06d}".rstrip("0")
    return text


def _option_group_resource() -> None:
    """AWS::RDS::OptionGroup, which moto's CloudFormation skips: the network stack's group never exists,
    and a database naming it (the failback's, in the primary region) fails to be created."""
    from moto.core.common_models import CloudFormationModel  # noqa: PLC0415
    from moto.rds.models import rds_backends  # noqa: PLC0415

    class OptionGroupResource(CloudFormationModel):
        """An option group made by a stack; its Ref is the group's name (template reference)."""

        def __init__(self, name: str) -> None:
            self.name = name

        @property
        def physical_resource_id(self) -> str:
            return self.name

        @staticmethod
        def cloudformation_name_type() -> str:
            return "OptionGroupName"

        @staticmethod
        def cloudformation_type() -> str:
            return OPTION_GROUP_TYPE

        @classmethod
        def create_from_cloudformation_json(
            cls, resource_name: str, cloudformation_json: Any, account_id: str, region_name: str,
            **kwargs: Any,  # noqa: ARG003 - moto's signature
        ) -> OptionGroupResource:
            properties = cloudformation_json["Properties"]
            name = str(properties.get("OptionGroupName") or resource_name).lower()
            backend = rds_backends[account_id][region_name]
            if _enabled and name not in backend.option_groups:  # plain moto: skipped, nothing is made
                group = backend.create_option_group({
                    "option_group_name": name, "engine_name": str(properties["EngineName"]),
                    "major_engine_version": str(properties["MajorEngineVersion"]),
                    "option_group_description": str(properties.get("OptionGroupDescription") or name),
                    "tags": properties.get("Tags") or []})
                options = [{"OptionName": str(o["OptionName"])} for o in properties.get("OptionConfigurations") or []]
                if options:
                    group.add_options(options)
            return cls(name)

        def delete(self, account_id: str, region_name: str) -> None:
            rds_backends[account_id][region_name].option_groups.pop(self.name, None)

    register_model(OptionGroupResource, OPTION_GROUP_TYPE)


def _instance_from_cloudformation() -> None:
    from moto.rds.exceptions import OptionGroupNotFoundFaultError  # noqa: PLC0415 - the embedded AWS only
    from moto.rds.models import DBInstance, rds_backends  # noqa: PLC0415

    current = DBInstance.create_from_cloudformation_json.__func__  # type: ignore[attr-defined]

    def create(cls: Any, /, resource_name: str, cloudformation_json: Any, account_id: str, region_name: str,
               **kwargs: Any) -> Any:
        if not _enabled:
            return current(cls, resource_name, cloudformation_json, account_id, region_name, **kwargs)
        properties: Mapping[str, Any] = cloudformation_json.get("Properties") or {}
        backend = rds_backends[account_id][region_name]
        group = str(properties.get("OptionGroupName") or "")
        # Checked before anything is made, as RDS refuses the create or restore request itself.
        if group and group not in backend.option_groups:
            raise OptionGroupNotFoundFaultError(group)
        snapshot = (backend.get_db_snapshot(_name(str(properties[SNAPSHOT_PROPERTY])))
                    if properties.get(SNAPSHOT_PROPERTY) else None)
        pitr = _point_in_time(backend, properties) if snapshot is None and properties.get(BACKUPS_PROPERTY) else None
        database = current(cls, resource_name, cloudformation_json, account_id, region_name, **kwargs)
        # Read once: the duration in force when the restore starts is the one it takes.
        duration = _restore_duration
        until = _now() + duration if duration is not None and (snapshot is not None or pitr is not None) else None
        if until is not None:
            # Before the status is read anywhere: the instance is "creating" until then (property below).
            database.__dict__[_RESTORED_AT] = until
        if snapshot is not None:
            _take_from_snapshot(database, snapshot, properties)
            _replace_created_event(backend, database, SNAPSHOT_RESTORE_MESSAGE.format(
                snapshot=snapshot.db_snapshot_identifier), until)
        elif pitr is not None:
            backup, restored_to = pitr
            _take_from_backup(database, backup, properties)
            _replace_created_event(backend, database, PITR_RESTORE_MESSAGE.format(
                source=backup.get("DBInstanceIdentifier") or properties[BACKUPS_PROPERTY],
                time=restore_time_text(restored_to)), until)
        if group:
            database.option_group_name = group
            database.option_group_supplied = True
        return database

    DBInstance.create_from_cloudformation_json = classmethod(create)  # type: ignore[assignment,method-assign]


def _name(identifier: str) -> str:
    """A snapshot's name from a name or an ARN (arn:...:snapshot:<name>)."""
    return identifier.rsplit(":", 1)[-1] if identifier.startswith("arn:") else identifier


def _take_from_snapshot(database: Any, snapshot: Any, properties: Mapping[str, Any]) -> None:
    """What RestoreDBInstanceFromDBSnapshot takes from the snapshot rather than the template."""
    database.storage_encrypted = bool(snapshot.encrypted or snapshot.storage_encrypted)
    database.kms_key_id = snapshot.kms_key_id
    database.allocated_storage = snapshot.allocated_storage
    database.master_username = snapshot.master_username
    if not properties.get("Engine"):
        database.engine = snapshot.engine
    if not properties.get("EngineVersion"):
        database.engine_version = snapshot.engine_version
    snapshot_group = getattr(snapshot, "option_group_name", None)
    if snapshot_group and not properties.get("OptionGroupName"):
        database.option_group_name = snapshot_group
        database.option_group_supplied = True


def _point_in_time(backend: Any, properties: Mapping[str, Any]) -> tuple[Mapping[str, Any], datetime]:
    """The replicated automated backups named, and the time restored to."""
    arn = str(properties[BACKUPS_PROPERTY])
    backup = _replicated_backup(backend, arn)
    if backup is None:
        # RDS refuses a restore from backups it does not hold.
        from moto.rds.exceptions import RDSClientError  # noqa: PLC0415 - the embedded AWS only

        raise RDSClientError("DBInstanceAutomatedBackupNotFound", f"Automated backup {arn} not found.")
    requested = properties.get(RESTORE_TIME_PROPERTY)
    if requested and str(properties.get(LATEST_PROPERTY, "")).lower() != "true":
        return backup, datetime.fromisoformat(str(requested).replace("Z", "+00:00")).astimezone(UTC)
    from jamsdr.pitr_fidelity import latest_restorable_time  # noqa: PLC0415

    return backup, latest_restorable_time(backup["_earliest"], str(backup.get("Region", "")))


def _replicated_backup(backend: Any, arn: str) -> Mapping[str, Any] | None:
    """The replicated automated backups with this ARN, as jamsdr/pitr_fidelity.py holds them."""
    from jamsdr import pitr_fidelity  # noqa: PLC0415

    # The two patches share the destination region's moto backend: pitr_fidelity keeps the backups there.
    held = backend.__dict__.get(pitr_fidelity._STATE) or {}
    record = held.get(arn)
    return record if isinstance(record, Mapping) else None


def _take_from_backup(database: Any, backup: Mapping[str, Any], properties: Mapping[str, Any]) -> None:
    """What a restore from automated backups takes from the source instance rather than the template."""
    database.storage_encrypted = bool(backup.get("Encrypted"))
    database.kms_key_id = backup.get("KmsKeyId")
    database.allocated_storage = backup.get("AllocatedStorage") or database.allocated_storage
    database.master_username = backup.get("MasterUsername") or database.master_username
    if not properties.get("Engine"):
        database.engine = backup.get("Engine") or database.engine
    if not properties.get("EngineVersion"):
        database.engine_version = backup.get("EngineVersion") or database.engine_version


def _replace_created_event(backend: Any, database: Any, message: str, until: datetime | None) -> None:
    """The restore event instead of moto's create event; dated ``until`` and held back until then when the
    restore takes time (RDS emits it when the restore finishes)."""
    from moto.rds.models import Event  # noqa: PLC0415 - the embedded AWS only

    identifier = database.db_instance_identifier
    backend.events[:] = [e for e in backend.events
                         if not (e.source_identifier == identifier and e.message == _CREATED_MESSAGE)]
    event = Event("DB_INSTANCE_CREATE", database)
    event.message = message
    event.event_categories = [RESTORATION]
    if until is not None:
        event.date = until
        event.__dict__[_SHOWN_FROM] = until
    backend.events.append(event)


def _restores_take_time() -> None:
    """The patches behind ``set_restore_duration``: every answer is computed from the clock when read."""
    from moto.cloudformation.models import CloudFormationBackend, Stack  # noqa: PLC0415
    from moto.rds.models import DBInstance, RDSBackend  # noqa: PLC0415

    # DBInstanceStatus (moto reads the attribute ``status``). A class property, so that moto's own state
    # checks see "creating" too (RDS refuses most operations on an instance that is not available); the
    # stored value stays in the instance's __dict__ under the same name.
    def instance_status(self: Any) -> Any:
        stored = vars(self).get("status")
        return "creating" if stored == "available" and _pending(self, _RESTORED_AT) else stored

    def set_instance_status(self: Any, value: Any) -> None:
        vars(self)["status"] = value

    DBInstance.status = property(instance_status, set_instance_status)  # type: ignore[assignment]

    current_events = RDSBackend.describe_events

    def describe_events(self: Any, *args: Any, **kwargs: Any) -> list[Any]:
        return [e for e in current_events(self, *args, **kwargs) if not _pending(e, _SHOWN_FROM)]

    RDSBackend.describe_events = describe_events  # type: ignore[method-assign]

    def stack_status(self: Any) -> Any:
        stored = vars(self).get("status")
        return "CREATE_IN_PROGRESS" if stored == _CREATE_COMPLETE and _pending(self, _STACK_READY_AT) else stored

    def set_stack_status(self: Any, value: Any) -> None:
        vars(self)["status"] = value

    Stack.status = property(stack_status, set_stack_status)  # type: ignore[assignment]

    current_outputs: Callable[[Any], Any] = vars(Stack)["outputs"].fget

    def outputs(self: Any) -> Any:
        # DescribeStacks reports outputs once the stack is complete.
        return None if _pending(self, _STACK_READY_AT) else current_outputs(self)

    Stack.outputs = property(outputs)  # type: ignore[assignment,method-assign]

    current_complete = Stack.mark_creation_complete

    def mark_creation_complete(self: Any) -> None:
        ready_at = max((m for m in (_marker(r, _RESTORED_AT) for r in _resources(self)) if m is not None),
                       default=None)
        with _lock:
            if ready_at is None:
                current_complete(self)
                return
            # The marker first: the status property holds CREATE_COMPLETE back from the moment it is stored.
            vars(self)[_STACK_READY_AT] = ready_at
            current_complete(self)
            event = self.events[-1]
            if event.resource_type == _STACK_TYPE and event.resource_status == _CREATE_COMPLETE:
                event.timestamp = ready_at
                event.__dict__[_SHOWN_FROM] = ready_at

    Stack.mark_creation_complete = mark_creation_complete  # type: ignore[method-assign]

    current_delete = Stack.delete

    def delete(self: Any) -> None:
        with _lock:
            if _pending(self, _STACK_READY_AT):
                # Deleted while restoring: the creation never completed, so its CREATE_COMPLETE never happens.
                self.events[:] = [e for e in self.events if not _pending(e, _SHOWN_FROM)]
            vars(self).pop(_STACK_READY_AT, None)
        current_delete(self)

    Stack.delete = delete  # type: ignore[method-assign]

    current_stack_events = CloudFormationBackend.describe_stack_events

    def describe_stack_events(self: Any, stack_name: str) -> list[Any]:
        with _lock:
            return [e for e in current_stack_events(self, stack_name) if not _pending(e, _SHOWN_FROM)]

    CloudFormationBackend.describe_stack_events = describe_stack_events  # type: ignore[method-assign]


def _resources(stack: Any) -> list[Any]:
    """The resources a stack has made (moto's lazy map also holds parameters and mappings: skipped by
    the caller, which looks only for the restore marker)."""
    parsed = getattr(stack.resource_map, "_parsed_resources", None) or {}
    return list(parsed.values())


def _marker(obj: Any, marker: str) -> datetime | None:
    moment = vars(obj).get(marker) if hasattr(obj, "__dict__") else None
    return moment if isinstance(moment, datetime) else None


def _snapshot_option_group() -> None:
    from moto.rds.models import DBSnapshot  # noqa: PLC0415 - the embedded AWS only

    current = DBSnapshot.__init__

    def init(self: Any, backend: Any, database: Any, *args: Any, **kwargs: Any) -> None:
        current(self, backend, database, *args, **kwargs)
        if _enabled:
            # Captured when the snapshot is taken, like moto's other database attributes.
            self.option_group_name = getattr(database, "option_group_name", None)

    DBSnapshot.__init__ = init  # type: ignore[method-assign]


def _copy_option_group() -> None:
    from moto.rds.models import RDSBackend  # noqa: PLC0415 - the embedded AWS only

    current = RDSBackend.copy_db_snapshot

    def copy_db_snapshot(self: Any, *args: Any, **kwargs: Any) -> Any:
        # The group is recorded as named: CopyDBSnapshot documents no OptionGroupNotFoundFault (the restore
        # that names a missing group fails instead), so the copy itself is not refused here.
        group = kwargs.get("option_group_name")
        copied: Any = current(self, *args, **kwargs)
        if _enabled and group:
            copied.option_group_name = group
        return copied

    RDSBackend.copy_db_snapshot = copy_db_snapshot  # type: ignore[method-assign]
