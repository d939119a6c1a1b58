"""Every tag jams-dr writes or reads on AWS resources: one place, so writers and readers agree.

Tags are jams-dr's memory in AWS itself (ownership survives a lost ledger write; see
workflow/steps_common.py): changing a value here orphans what earlier versions tagged.
"""

from __future__ import annotations

TAG_MANAGED_BY = "managed-by"
TAG_ENVIRONMENT = "jams-dr:environment"
TAG_MODE = "jams-dr:mode"
TAG_ROLE = "jams-dr:role"
TAG_KIND = "jams-dr:kind"
TAG_EXECUTION = "jams-dr:execution-id"
TAG_STACK_ID = "jams-dr:stack-id"

# snapshots (chalicelib/snapshots/rules.py)
TAG_TAKEN_AT = "jams-dr:taken-at"
TAG_SOURCE_ID = "jams-dr:source-id"
TAG_SOURCE_ARN = "jams-dr:source-arn"
TAG_SOURCE_CREATED = "jams-dr:source-created"
TAG_COPY_STARTED = "jams-dr:copy-started"
TAG_COPY_COMPLETED = "jams-dr:copy-completed"

# fencing (chalicelib/workflow/steps/fence.py)
TAG_FENCED_BY = "jams-dr:fenced-by"
TAG_EPOCH = "jams-dr:epoch"
TAG_ORIGINAL_GROUPS = "jams-dr:original-groups"
