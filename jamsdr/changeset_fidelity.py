"""CloudFormation change-set facts moto drops, restored in the embedded AWS (`jams-dr bootstrap`).

`jams-dr bootstrap` creates and updates its stacks through change sets (jamsdr/deploy.py). moto 5.2.5
answers the change-set API but gets wrong what bootstrap decides on:

- A stack created by executing a CREATE change set has no outputs (moto builds the output map from
  the empty template of the review stack and never again), its resources are made by the update path
  (not in dependency order, without the stack tags on EC2 resources), and its exports are not
  registered. AWS: executing a CREATE change set creates the stack as CreateStack would (User Guide,
  "Create a stack from a change set"; API reference, ExecuteChangeSet).
- After an UPDATE change set is executed, the stack keeps its old input parameters and outputs (the
  next identical change set is not "no changes"; an output that depends on a parameter is stale).
- An UPDATE change set that changes only parameter values lists no change, although every resource
  that references a changed parameter is modified (User Guide, "Update CloudFormation stacks using
  change sets": the change set lists the resources the update modifies).
- "No changes": AWS creates the change set and marks it ``Status: FAILED`` with ``StatusReason`` "The
  submitted information didn't contain changes. Submit different information to create a change set."
  (API reference, DescribeChangeSet ``Status``/``StatusReason``). moto instead refuses CreateChangeSet
  with "No updates are to be performed." when every parameter is passed explicitly, and compares the
  raw request with the previous one (a default passed explicitly counts as a change).
- Executing a change set deletes every other change set of the stack, and a stack updated after a
  change set was made makes that change set ``OBSOLETE``: ExecuteChangeSet then fails
  (``InvalidChangeSetStatus``) (API reference, ExecuteChangeSet; ChangeSetSummary ``ExecutionStatus``:
  "in an OBSOLETE state because the stack was already updated"). Bootstrap relies on it: the snapshot
  pipeline may pin a new recovery point on the standby stack between bootstrap's change set and its
  execution, and the stale pin must never be executed back. moto executes anything, any number of times.

Installed once per process (``EmbeddedAws.start``); tests/functional/test_bootstrap.py states each fact.
"""

from __future__ import annotations

from typing import Any

NO_CHANGES_REASON = (
    "The submitted information didn't contain changes. Submit different information to create a change set."
)
_installed = False


def install() -> None:
    """Patch moto's CloudFormation change sets (idempotent)."""
    global _installed  # noqa: PLW0603 - one patch per process, like moto's own backends
    if _installed:
        return
    _parameter_changes()
    _no_changes()
    _execute_like_aws()
    _obsolete_on_update()
    _installed = True


def _effective_parameters(template_dict: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """The values a stack would run with: the template's defaults, overridden by the given values (as
    text: moto resolves Number parameters to int)."""
    declared = template_dict.get("Parameters") or {}
    defaults = {k: str(v["Default"]) for k, v in declared.items() if isinstance(v, dict) and "Default" in v}
    return {**defaults, **{k: str(v) for k, v in given.items() if k in declared}}


def _parameter_changes() -> None:
    from moto.cloudformation.models import Change, ChangeSet  # noqa: PLC0415 - the embedded AWS only
    from moto.cloudformation.parsing import get_references_from_template  # noqa: PLC0415

    def diff(self: Any) -> list[Any]:
        resource_map = self.stack.resource_map
        names = resource_map.build_resource_diff(self.template_dict)
        new, old = self.template_dict.get("Resources") or {}, resource_map._resource_json_map or {}
        if self.change_set_type == "UPDATE":
            # A resource whose definition is unchanged but references a parameter whose value changes is
            # modified too (values compared as the stack runs with them, defaults included).
            before = _effective_parameters(self.stack.template_dict, self.stack.stack_parameters)
            after = _effective_parameters(self.template_dict, self.parameters)
            changed = {k for k, v in after.items() if before.get(k) != v}
            names["Modify"] += [name for name, body in new.items()
                                if name in old and body == old[name] and name not in names["Modify"]
                                and changed & set(get_references_from_template(body))]
        changes = [Change(action, name, new[name]["Type"]) for action in ("Add", "Modify") for name in names[action]]
        changes += [Change("Remove", name, old[name]["Type"]) for name in names["Remove"]]
        return changes

    ChangeSet.diff = diff  # type: ignore[method-assign]


def _no_changes() -> None:
    from moto.cloudformation.models import CloudFormationBackend  # noqa: PLC0415
    from moto.cloudformation.responses import CloudFormationResponse  # noqa: PLC0415

    validate = CloudFormationResponse._validate_different_update

    def validate_different_update(self: Any, *args: Any, **kwargs: Any) -> None:
        if self._get_action() == "CreateChangeSet":
            return  # AWS answers with a FAILED change set, never a refusal
        validate(self, *args, **kwargs)

    CloudFormationResponse._validate_different_update = validate_different_update  # type: ignore[method-assign]

    create = CloudFormationBackend.create_change_set

    def create_change_set(self: Any, *args: Any, **kwargs: Any) -> tuple[str, str]:
        change_set_id, stack_id = create(self, *args, **kwargs)
        change_set = self.change_sets[change_set_id]
        stack = self.stacks[stack_id]
        if change_set.change_set_type == "UPDATE":
            same_template = stack.has_template(change_set.template)
            same_values = (_effective_parameters(change_set.template_dict, change_set.parameters)
                           == _effective_parameters(stack.template_dict, stack.stack_parameters))
            if same_template and same_values:
                change_set.status, change_set.execution_status = "FAILED", "UNAVAILABLE"
                change_set.status_reason = NO_CHANGES_REASON
            else:
                change_set.status, change_set.execution_status = "CREATE_COMPLETE", "AVAILABLE"
                change_set.status_reason = None
        return change_set_id, stack_id

    CloudFormationBackend.create_change_set = create_change_set  # type: ignore[method-assign]


def _execute_like_aws() -> None:
    from moto.cloudformation.exceptions import CloudFormationError  # noqa: PLC0415
    from moto.cloudformation.models import ChangeSet, CloudFormationBackend  # noqa: PLC0415

    class InvalidChangeSetStatus(CloudFormationError):
        code = "InvalidChangeSetStatus"

    def apply(self: Any) -> None:
        stack = self.stack
        in_use = _effective_parameters(stack.template_dict, stack.stack_parameters)
        stack.template = self.template
        stack._parse_template()
        stack.description = stack.template_dict.get("Description")
        if self.change_set_type == "CREATE":
            # As CreateStack: a resource map of the real template, resources in dependency order.
            stack.parameters = dict(self.parameters)
            stack.resource_map = stack._create_resource_map()
            stack.resource_map.create(stack.template_dict)
        else:
            # moto modifies every resource that references a parameter whose *request* value differs from
            # the previous request's (a default passed explicitly counts): compare the values in use.
            stack.resource_map.input_parameters = in_use
            stack.resource_map.update(self.template_dict, self.parameters)
            stack.parameters = dict(self.parameters)
        stack.output_map = stack._create_output_map()

    ChangeSet.apply = apply  # type: ignore[method-assign]

    execute = CloudFormationBackend.execute_change_set

    def execute_change_set(self: Any, change_set_name: str, stack_name: str | None = None) -> None:
        change_set = self.describe_change_set(change_set_name)
        if change_set.execution_status != "AVAILABLE":
            raise InvalidChangeSetStatus(
                f"ChangeSet [{change_set.change_set_id}] cannot be executed in its current execution status "
                f"of [{change_set.execution_status}]")
        execute(self, change_set.change_set_id, stack_name)
        stack = self.stacks[change_set.stack_id]
        if change_set.change_set_type == "CREATE":
            for export in stack.exports:
                self.exports[export.name] = export
        # "CloudFormation deletes all other change sets associated with the stack."
        others = [k for k, cs in self.change_sets.items() if cs.stack_id == stack.stack_id and cs is not change_set]
        for other in others:
            del self.change_sets[other]

    CloudFormationBackend.execute_change_set = execute_change_set  # type: ignore[method-assign]


def _obsolete_on_update() -> None:
    from moto.cloudformation.models import Stack, cloudformation_backends  # noqa: PLC0415

    update = Stack.update

    def stack_update(self: Any, *args: Any, **kwargs: Any) -> None:
        update(self, *args, **kwargs)
        backend = cloudformation_backends[self.account_id][self.region_name]
        for change_set in backend.change_sets.values():
            if change_set.stack_id == self.stack_id and change_set.execution_status == "AVAILABLE":
                change_set.execution_status = "OBSOLETE"

    Stack.update = stack_update  # type: ignore[method-assign]
