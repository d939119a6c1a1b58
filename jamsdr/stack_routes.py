"""The embedded AWS deletes a stack's routes with the stack, as CloudFormation does.

Deleting a stack deletes every resource it created, except those with ``DeletionPolicy: Retain``
(CloudFormation User Guide, "Delete a stack from the CloudFormation console"; "DeletionPolicy
attribute"). moto 5.x has no delete handler for ``AWS::EC2::Route``: the application stack's NAT routes
stay in the network stack's route tables after the stack is gone, and the next application stack on
that network (a failback's new primary, the next recovery) fails with ``RouteAlreadyExists``, which AWS
would never answer. Listed in docs/aws-fidelity.md.

How: on DeleteStack, a ``before-parameter-build`` hook notes the stack's name in the call's request
context (only it sees the API parameters), a ``before-call`` hook (which knows the region) reads the
stack's ``AWS::EC2::Route`` resources (moto's physical id is ``<route table id>~<destination>``), and an
``after-call`` hook deletes those still there once the deletion was accepted.
"""

from __future__ import annotations

from typing import Any

from chalicelib.aws import ClientFactory, error_code

_KEY = "jamsdr_stack_routes"
_NAME = "jamsdr_stack_routes_name"
_PARAMS = "before-parameter-build.cloudformation.DeleteStack"
_BEFORE = "before-call.cloudformation.DeleteStack"
_AFTER = "after-call.cloudformation.DeleteStack"


class StackRouteCleanup:
    """Install with ``install(clients)``; ``deleted`` lists the routes it removed, as ``rtb~cidr``."""

    def __init__(self, clients: ClientFactory) -> None:
        self._clients = clients
        self.deleted: list[str] = []

    def install(self) -> StackRouteCleanup:
        self._clients.register_hook(_PARAMS, self._name)
        self._clients.register_hook(_BEFORE, self._before)
        self._clients.register_hook(_AFTER, self._after)
        return self

    def uninstall(self) -> None:
        self._clients.unregister_hook(_PARAMS, self._name)
        self._clients.unregister_hook(_BEFORE, self._before)
        self._clients.unregister_hook(_AFTER, self._after)

    @staticmethod
    def _name(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        context[_NAME] = str(params.get("StackName") or "")

    def _before(self, request_signer: Any, context: dict[str, Any], **_: Any) -> None:
        name = context.pop(_NAME, "")
        if not name:
            return
        region = str(request_signer.region_name)
        cfn = self._clients.client("cloudformation", region)
        routes: list[str] = []
        try:
            for page in cfn.get_paginator("list_stack_resources").paginate(StackName=name):
                routes += [str(r.get("PhysicalResourceId") or "") for r in page.get("StackResourceSummaries", [])
                           if r.get("ResourceType") == "AWS::EC2::Route"]
        except Exception:  # unreadable (no such stack, region down, a fault): the DeleteStack
            return  # itself gets the answer the product must see; nothing to emulate then
        context[_KEY] = (region, [r for r in routes if "~" in r])

    def _after(self, http_response: Any, context: dict[str, Any], **_: Any) -> None:
        region, routes = context.pop(_KEY, (None, []))
        if region is None or getattr(http_response, "status_code", 500) >= 300:
            return
        ec2 = self._clients.client("ec2", region)
        for route in routes:
            table, destination = route.split("~", 1)
            try:
                ec2.delete_route(RouteTableId=table, DestinationCidrBlock=destination)
            except Exception as exc:  # already gone (or its table with it): what AWS leaves too
                if error_code(exc) not in ("InvalidRoute.NotFound", "InvalidRouteTableID.NotFound"):
                    raise
                continue
            self.deleted.append(route)
