"""The one coded error tree (chalicelib/errors.py) and the codes `error_code` reads from it (no AWS)."""

from __future__ import annotations

from botocore.exceptions import ClientError, EndpointConnectionError

from chalicelib.aws import error_code
from chalicelib.errors import AwsError, AwsFailure, JamsDrError, Refused, StepFailure
from chalicelib.workflow.model import (
    StepError,
)


def test_error_code_uses_our_code_aws_code_or_class() -> None:
    # jams-dr's own errors answer their code (AwsError used to answer its class name, "AwsError").
    assert error_code(AwsError("standby stack lacks the pin", code="StandbyStackInvalid")) == "StandbyStackInvalid"
    assert error_code(StepError("no pinned copy", code="PinnedCopyMissing")) == "PinnedCopyMissing"
    assert error_code(StepError("plain")) == "StepFailed"
    throttled = ClientError({"Error": {"Code": "Throttling", "Message": "slow down"}}, "DescribeStacks")
    assert error_code(throttled) == "Throttling"
    assert error_code(EndpointConnectionError(endpoint_url="https://rds.us-east-1.amazonaws.com")) == "Unreachable"
    assert error_code(KeyError("x")) == "KeyError"


def test_every_error_of_jams_dr_is_one_coded_tree() -> None:
    """One base, three kinds; each concrete class keeps its historic builtin base for old catchers."""
    from chalicelib.detection.events import EventError
    from chalicelib.detection.store import WatchConflict
    from chalicelib.outbox import OutboxError
    from chalicelib.settings import SettingsError
    from chalicelib.workflow.ledger import LeaseHeld, SlotHeld
    from chalicelib.workflow.records import LedgerError
    from chalicelib.workflow.registry import UnknownWorkflow
    from chalicelib.workflow.starter import StartError
    from jamsdr.scenario import ScenarioError
    from jamsdr.stage import StageError

    refusals = (EventError, SettingsError, LedgerError, LeaseHeld, SlotHeld, UnknownWorkflow, StartError,
                ScenarioError, StageError)
    assert all(issubclass(kind, Refused) for kind in refusals)
    assert all(issubclass(kind, AwsFailure) for kind in (AwsError, OutboxError, WatchConflict))
    assert issubclass(StepError, StepFailure) and issubclass(StepError, RuntimeError)
    assert issubclass(SettingsError, ValueError) and issubclass(LedgerError, RuntimeError)
    assert all(issubclass(kind, JamsDrError) for kind in (Refused, AwsFailure, StepFailure))
    assert error_code(StartError("no such execution")) == "StartError"
