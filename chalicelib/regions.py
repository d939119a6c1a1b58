"""The shape of an AWS region name, in one place (settings, the heartbeat CLI and scenario files check it).

Commercial (us-east-1), GovCloud (us-gov-west-1) and the isolated partitions (us-iso-east-1,
us-isob-east-1). ASCII only: ``\\d`` would also accept other scripts' digits.
"""

from __future__ import annotations

import re

# \Z, not $: "$" also matches before a trailing newline ("us-east-1\n" is not a region name).
REGION_PATTERN = re.compile(r"^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-\d\Z", re.ASCII)


def is_region(value: str) -> bool:
    return REGION_PATTERN.match(value) is not None
