"""The one place AWS clients are made.

Clients are cached per (service, region), created on first use (never at import time, which would
defeat moto and slow cold starts), and share one retry policy. ``AWS_ENDPOINT_URL`` is honoured, and
one region can be pointed elsewhere: the embedded drill "takes a region down" by pointing it at a
closed loopback port, so every call into that region fails in milliseconds, as a dead region's API
would from the caller's point of view.
"""

from __future__ import annotations

import contextvars
import os
import socket
import threading
from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Literal, overload

import boto3
from botocore.config import Config
from botocore.exceptions import (
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)

from chalicelib.codes import REGION_TROUBLE_CODES, THROTTLING_CODES, UNREACHABLE
from chalicelib.errors import JamsDrError
from chalicelib.scoping import scoped

if TYPE_CHECKING:
    # Type-only (boto3-stubs, a dev dependency): mypy checks every call's operation and parameters
    # against the service model; nothing of it is imported at run time, so the Lambda zip is unchanged.
    from mypy_boto3_cloudformation import CloudFormationClient
    from mypy_boto3_cloudwatch import CloudWatchClient
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_ec2 import EC2Client
    from mypy_boto3_elbv2 import ElasticLoadBalancingv2Client
    from mypy_boto3_iam import IAMClient
    from mypy_boto3_lambda import LambdaClient
    from mypy_boto3_rds import RDSClient
    from mypy_boto3_route53 import Route53Client
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_sns import SNSClient
    from mypy_boto3_ssm import SSMClient

# Bounded retries: standard mode backs off with jitter and retries throttling and 5xx. Connect
# timeouts stay short so an unreachable region is a signal within seconds, not botocore's 60 s.
DEFAULT_MAX_ATTEMPTS = 4
DEFAULT_CONNECT_TIMEOUT = 3.0
DEFAULT_READ_TIMEOUT = 30.0

UNREACHABLE_ERRORS: tuple[type[Exception], ...] = (
    EndpointConnectionError,
    ConnectTimeoutError,
    ReadTimeoutError,
    ConnectionError,
)


def error_code(exc: BaseException) -> str:
    """The code to match an error on: AWS's error code, ``Unreachable``, jams-dr's own ``code``, or the
    class name."""
    if isinstance(exc, JamsDrError):
        return exc.code
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", "Unknown"))
    if isinstance(exc, UNREACHABLE_ERRORS):
        return UNREACHABLE
    return type(exc).__name__


def is_unreachable(exc: BaseException) -> bool:
    return isinstance(exc, UNREACHABLE_ERRORS)


def is_throttled(exc: BaseException) -> bool:
    return isinstance(exc, ClientError) and error_code(exc) in THROTTLING_CODES


def region_unanswered(exc: BaseException) -> bool:
    """The region's API did not answer (connection) or failed as a whole (5xx), not a refusal of ours."""
    if is_unreachable(exc):
        return True
    if isinstance(exc, ClientError):
        if error_code(exc) in THROTTLING_CODES:
            return False
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return error_code(exc) in REGION_TROUBLE_CODES or int(status or 0) >= 500
    return False


def closed_loopback_endpoint() -> str:
    """A loopback URL where nothing listens: connections are refused at once."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


class ClientFactory:
    """Creates and caches boto3 clients; thread-safe (boto3 sessions are not)."""

    def __init__(
        self,
        *,
        session: boto3.session.Session | None = None,
        endpoint_url: str | None = None,
        region_endpoints: Mapping[str, str] | None = None,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        retry_mode: Literal["legacy", "standard", "adaptive"] = "standard",
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        read_timeout: float = DEFAULT_READ_TIMEOUT,
    ) -> None:
        self._session = session
        self._endpoint_url = endpoint_url if endpoint_url is not None else os.environ.get("AWS_ENDPOINT_URL")
        self._region_endpoints: dict[str, str] = dict(region_endpoints or {})
        self._config = Config(
            retries={"total_max_attempts": max_attempts, "mode": retry_mode},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
        )
        self._clients: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()
        self._hooks: list[tuple[str, Any]] = []
        self._children: list[ClientFactory] = []
        self._retry = (max_attempts, retry_mode, connect_timeout, read_timeout)

    def with_credentials(self, access_key_id: str, secret_access_key: str,
                         session_token: str | None = None) -> ClientFactory:
        """A factory whose clients sign with other credentials (an in-process Lambda runtime's function
        role) and otherwise follow this one: the same endpoints and hooks, now and when they change."""
        session = boto3.session.Session(aws_access_key_id=access_key_id, aws_secret_access_key=secret_access_key,
                                        aws_session_token=session_token)
        max_attempts, retry_mode, connect_timeout, read_timeout = self._retry
        child = ClientFactory(session=session, endpoint_url=self._endpoint_url or "",
                              region_endpoints=self._region_endpoints, max_attempts=max_attempts,
                              retry_mode=retry_mode, connect_timeout=connect_timeout, read_timeout=read_timeout)
        with self._lock:
            child._hooks = list(self._hooks)
            self._children.append(child)
        return child

    @overload
    def client(self, service: Literal["cloudformation"], region: str) -> CloudFormationClient: ...
    @overload
    def client(self, service: Literal["cloudwatch"], region: str) -> CloudWatchClient: ...
    @overload
    def client(self, service: Literal["dynamodb"], region: str) -> DynamoDBClient: ...
    @overload
    def client(self, service: Literal["ec2"], region: str) -> EC2Client: ...
    @overload
    def client(self, service: Literal["elbv2"], region: str) -> ElasticLoadBalancingv2Client: ...
    @overload
    def client(self, service: Literal["iam"], region: str) -> IAMClient: ...
    @overload
    def client(self, service: Literal["lambda"], region: str) -> LambdaClient: ...
    @overload
    def client(self, service: Literal["rds"], region: str) -> RDSClient: ...
    @overload
    def client(self, service: Literal["route53"], region: str) -> Route53Client: ...
    @overload
    def client(self, service: Literal["s3"], region: str) -> S3Client: ...
    @overload
    def client(self, service: Literal["sns"], region: str) -> SNSClient: ...
    @overload
    def client(self, service: Literal["ssm"], region: str) -> SSMClient: ...
    @overload
    def client(self, service: str, region: str) -> Any: ...
    def client(self, service: str, region: str) -> Any:
        key = (service, region)
        cached = self._clients.get(key)
        if cached is not None:
            return cached
        with self._lock:
            cached = self._clients.get(key)
            if cached is None:
                if self._session is None:
                    self._session = boto3.session.Session()
                endpoint = self._region_endpoints.get(region, self._endpoint_url)
                # The service name is a plain str here: the overloads above give callers the typed client.
                session: Any = self._session
                cached = session.client(
                    service, region_name=region, endpoint_url=endpoint or None, config=self._config
                )
                for event_name, handler in self._hooks:
                    cached.meta.events.register(event_name, handler)
                self._clients[key] = cached
            return cached

    def set_region_endpoint(self, region: str, endpoint_url: str | None) -> None:
        """Point every later client of ``region`` at ``endpoint_url`` (None: back to the default)."""
        with self._lock:
            if endpoint_url is None:
                self._region_endpoints.pop(region, None)
            else:
                self._region_endpoints[region] = endpoint_url
            for key in [k for k in self._clients if k[1] == region]:
                del self._clients[key]
            children = list(self._children)
        for child in children:
            child.set_region_endpoint(region, endpoint_url)

    def register_hook(self, event_name: str, handler: Any) -> None:
        """Register a botocore event hook on every client, present and future (tests, call counting)."""
        with self._lock:
            self._hooks.append((event_name, handler))
            for cached in self._clients.values():
                cached.meta.events.register(event_name, handler)
            children = list(self._children)
        for child in children:
            child.register_hook(event_name, handler)

    def unregister_hook(self, event_name: str, handler: Any) -> None:
        """Undo ``register_hook`` on every client, present and future."""
        with self._lock:
            self._hooks = [(name, fn) for name, fn in self._hooks if not (name == event_name and fn is handler)]
            for cached in self._clients.values():
                cached.meta.events.unregister(event_name, handler)
            children = list(self._children)
        for child in children:
            child.unregister_hook(event_name, handler)


_factory: ClientFactory | None = None
_factory_lock = threading.Lock()
# An in-process Lambda runtime (the embedded drill's) gives each invocation its function's credentials.
_scoped_factory: contextvars.ContextVar[ClientFactory | None] = contextvars.ContextVar("jamsdr_factory",
                                                                                     default=None)


def use_factory(value: ClientFactory | None) -> AbstractContextManager[None]:
    """``get_factory()`` answers ``value`` within (this thread / context only)."""
    return scoped(_scoped_factory, value)


def get_factory() -> ClientFactory:
    global _factory  # noqa: PLW0603 - one cache of clients per Lambda container
    scoped = _scoped_factory.get()
    if scoped is not None:
        return scoped
    if _factory is None:
        with _factory_lock:
            if _factory is None:
                _factory = ClientFactory()
    return _factory


def set_factory(factory: ClientFactory | None) -> None:
    """Install a factory (the embedded drill, tests); None resets to a fresh default on next use."""
    global _factory  # noqa: PLW0603
    with _factory_lock:
        _factory = factory
