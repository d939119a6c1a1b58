"""AWS's public Windows AMI parameters, which moto lacks, in the embedded AWS.

AWS publishes the latest Windows Server images as public SSM parameters in every commercial region,
under ``/aws/service/ami-windows-latest/`` (EC2 User Guide for Windows, "Query for the latest Windows
AMI using Systems Manager Parameter Store"). The application template takes its scheduler image from
one of them (``AWS::SSM::Parameter::Value<AWS::EC2::Image::Id>``), so that one template builds in
both regions. moto 5.2.5 publishes only the Amazon Linux and ECS trees: without this, every
application stack would fail in the emulator, or the template would need an emulator-only default.

The values are Windows images of moto's own catalogue (described by ``ec2.describe_images`` in every
region), so the preflight's image check runs against the emulator as it does against AWS. Loaded
lazily per region, as moto loads its own trees, so the parameters survive moto's reset.
"""

from __future__ import annotations

import datetime
from typing import Any

WINDOWS_LATEST = "/aws/service/ami-windows-latest/"
# moto's Windows Server "Full Base" image: the closest of its catalogue to the images named here.
EMULATOR_WINDOWS_AMI = "ami-b7e93bce"
PUBLISHED = (
    "Windows_Server-2022-English-Full-Base",
    "Windows_Server-2019-English-Full-Base",
    "Windows_Server-2016-English-Full-Base",
)

_installed = False


def install() -> None:
    """Teach moto's parameter store the Windows tree (idempotent; process-wide, as moto's backends)."""
    global _installed  # noqa: PLW0603 - one patch per process, like moto's own backends
    if _installed:
        return
    from moto.ssm.models import Parameter, ParameterDict  # noqa: PLC0415 - the embedded AWS only

    original = ParameterDict._check_loading_status

    def check_loading_status(self: Any, key: str) -> None:
        original(self, key)
        if str(key or "").startswith(WINDOWS_LATEST) and not getattr(self, "_jamsdr_windows_loaded", False):
            self._jamsdr_windows_loaded = True
            for name in PUBLISHED:
                # dict.__getitem__ of the defaultdict: ParameterDict's own would recurse into this check.
                super(ParameterDict, self).__getitem__(WINDOWS_LATEST + name).append(Parameter(  # type: ignore[abstract]
                    account_id=self.account_id, name=WINDOWS_LATEST + name, value=EMULATOR_WINDOWS_AMI,
                    parameter_type="String", description=None, allowed_pattern=None, keyid=None,
                    last_modified_date=datetime.datetime.now(datetime.UTC), version=1,
                    data_type="aws:ec2:image"))

    ParameterDict._check_loading_status = check_loading_status  # type: ignore[method-assign]
    _installed = True
