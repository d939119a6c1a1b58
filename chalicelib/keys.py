"""The names of jams-dr's records, in one place: the ledger table's partition keys and the artifact
bucket's object keys. Writers and readers (the ledger, the watcher, the snapshot pipeline, the outbox,
the operator CLI) take them from here, so they cannot drift apart.
"""

from __future__ import annotations

# --- the ledger table (DynamoDB, recovery region): one item per key ---------------------------------

EXEC_PREFIX = "exec#"
WATCH_PREFIX = "watch#"
OUTBOX_PREFIX = "outbox#"


def execution_key(execution_id: str) -> str:
    return f"{EXEC_PREFIX}{execution_id}"


def lease_key(environment: str, kind: str = "recovery") -> str:
    """Recoveries and failbacks share ``lease#<env>``; drills take their own, so a drill never blocks a
    recovery, nor a recovery a drill."""
    return f"lease#{environment}#drill" if kind == "drill" else f"lease#{environment}"


def fence_key(environment: str) -> str:
    return f"fence#{environment}"


def slot_key(environment: str) -> str:
    """The one active recovery or failback of the environment (they exclude each other)."""
    return f"active#{environment}"


def watch_key(environment: str) -> str:
    return f"{WATCH_PREFIX}{environment}"


def notice_key(topic: str, environment: str) -> str:
    return f"notice#{topic}#{environment}"


# --- the artifact bucket (S3, recovery region) -------------------------------------------------------

APP_TEMPLATE_KEY = "templates/jams-app.yaml"
# Optional deployment choices of the application stack that no network output carries (instance
# sizes, regional AMIs, load balancer type): {"default": {...}, "<region>": {...}} next to the template,
# in the recovery region, so a recovery needs nothing from the failed region to build a 1:1 stack.
APP_PARAMETERS_KEY = "templates/jams-app.parameters.json"
