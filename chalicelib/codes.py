"""The AWS error codes jams-dr tells apart, in one place (aws.py's classifiers and the workflow's
retry policy read them; copies had drifted, e.g. the retry policy lacked ``RequestThrottled``).
"""

from __future__ import annotations

# What aws.error_code answers when an endpoint did not answer at all (connection refused, timeouts).
UNREACHABLE = "Unreachable"

# Throttling is the region answering "slow down" (EC2 sends RequestLimitExceeded with HTTP 503): retry it,
# never read it as the region being gone.
THROTTLING_CODES = frozenset(
    {"Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequestsException", "SlowDown",
     "RequestThrottled", "ProvisionedThroughputExceededException", "Throttled"}  # Throttled: SNS's own
)

# Error codes with which a region's API says "I am failing", as opposed to "your request is wrong".
REGION_TROUBLE_CODES = frozenset(
    {"ServiceUnavailable", "ServiceUnavailableException", "Unavailable", "InternalError", "InternalFailure",
     "InternalServiceError", "InternalServerError", "RequestTimeout", "RequestTimeoutException"}
)

# Worth retrying: throttling, 5xx-style failures, no answer, and Lambda's ServiceException (its 5xx).
TRANSIENT_CODES = THROTTLING_CODES | REGION_TROUBLE_CODES | {UNREACHABLE, "ServiceException"}
