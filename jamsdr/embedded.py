"""An embedded two-region AWS: moto's server on a free loopback port, with regions that can fail.

``EmbeddedAws`` starts the server and installs a client factory pointing every region at it.
``build_world`` creates what a real deployment has: in the primary region the network and the
application stacks (JAMS itself) and the event-forwarding rule; in the recovery region the support
stack, the standby stack and the application template in the artifact bucket. It returns the
settings a deployed stage would have, derived from the stacks' outputs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3

from chalicelib.aws import ClientFactory, closed_loopback_endpoint, set_factory
from chalicelib.clock import Clock
from chalicelib.keys import APP_PARAMETERS_KEY, APP_TEMPLATE_KEY
from chalicelib.settings import Settings
from jamsdr import (
    changeset_fidelity,
    network_fidelity,
    pitr_fidelity,
    public_parameters,
    quota_fidelity,
    rds_fidelity,
    traffic_emulation,
)
from jamsdr.deploy import TEMPLATES, app_parameters, deploy_stack
from jamsdr.faults import CONNECTION, MONITORING_READS, Fault, FaultInjector, InjectedFault, scenario_faults
from jamsdr.scenario import ScenarioFault
from jamsdr.static_stability import GLOBAL_CONTROL_PLANES
from jamsdr.traffic_stack import deploy_traffic_stack

# moto 5.2 creates every load balancer as an application LB and refuses TCP listeners: the embedded
# world uses the template's HTTP variant (real stages keep the default network LB).
EMULATOR_APP_PARAMETERS = {"AgentLoadBalancerType": "application"}
# moto's dummy credentials, for the loopback server only (never a real key).
_FAKE_CREDENTIALS = dict.fromkeys(("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"), "testing")


class _TemplateLintCache:
    """moto's ValidateTemplate runs the whole cfn-lint rule set on every call: 3-10 s of CPU on a 2-core
    machine (most of an embedded recovery's preflight; BENCHMARKS.md, "Profile"), where AWS answers in
    well under a second. The answer is a pure function of the template body (and of the cfn-lint and
    moto versions), so the embedded AWS lints each body once per process, and remembers clean bodies on
    disk for later processes (``JAMSDR_CACHE_DIR``, default ``~/.cache/jams-dr``). A caller arriving
    while a body is being linted waits for that result instead of linting it again.
    """

    def __init__(self, lint: Callable[[str], list[Any]], directory: Path | None) -> None:
        self.lint = lint
        self._directory = directory
        self._lock = threading.Lock()
        self._results: dict[str, Future[list[Any]]] = {}

    def __call__(self, template: str) -> list[Any]:
        key = self._key(template)
        with self._lock:
            future = self._results.get(key)
            owner = future is None
            if future is None:
                future = self._results[key] = Future()
        if owner:
            try:
                future.set_result(self._lint_once(key, template))
            except BaseException as exc:
                with self._lock:
                    del self._results[key]  # a failure is not remembered: the next call lints again
                future.set_exception(exc)
        return future.result()

    def known_clean(self, template: str) -> bool:
        """Linted clean before, in this process or (on disk) in an earlier one."""
        key = self._key(template)
        with self._lock:
            future = self._results.get(key)
        if future is not None and future.done() and future.exception() is None:
            return not future.result()
        marker = self._marker(key)
        return marker is not None and marker.exists()

    def _key(self, template: str) -> str:
        return hashlib.sha256(f"{_lint_versions()}\n{template}".encode()).hexdigest()

    def _marker(self, key: str) -> Path | None:
        return self._directory / f"{key}.clean" if self._directory is not None else None

    def _lint_once(self, key: str, template: str) -> list[Any]:
        marker = self._marker(key)
        if marker is not None and marker.exists():
            return []
        matches = self.lint(template)
        if marker is not None and not matches:  # only clean bodies: a finding is always reported afresh
            try:
                marker.parent.mkdir(parents=True, exist_ok=True)
                marker.touch()
            except OSError as exc:
                logging.getLogger(__name__).info("lint cache not written (%s): %s", marker, exc)
        return matches


def _lint_versions() -> str:
    from importlib.metadata import version  # noqa: PLC0415

    return f"cfn-lint {version('cfn-lint')}, moto {version('moto')}"


def _lint_cache_directory() -> Path:
    configured = os.environ.get("JAMSDR_CACHE_DIR", "").strip()
    base = Path(configured) if configured else Path.home() / ".cache" / "jams-dr"
    return base / "moto-template-lint"


_MOTO_LINT = "validate_template_cfn_lint"  # what moto's CloudFormation backend calls (moto 5.x)


def _install_lint_cache(*, load: bool) -> _TemplateLintCache | None:
    """Memoize moto's template lint in this process (idempotent).

    None if JAMSDR_LINT_CACHE=off (moto's own behaviour, for before/after measurements), if moto's layout
    changed, or if moto's CloudFormation is not loaded yet and ``load`` is false:
    importing it takes seconds, which the first CloudFormation request pays anyway (no time is saved by
    paying it earlier, so start() and reset() only patch an already loaded module).
    """
    if os.environ.get("JAMSDR_LINT_CACHE", "").lower() == "off":  # benchmarks/drill_time.py --no-lint-cache
        return None
    if not load and "moto.cloudformation.models" not in sys.modules:
        return None
    from moto.cloudformation import models  # noqa: PLC0415 - heavy; never on the Lambda path

    current = getattr(models, _MOTO_LINT, None)
    if isinstance(current, _TemplateLintCache):
        return current
    if current is None:
        return None
    cache = _TemplateLintCache(current, _lint_cache_directory())
    setattr(models, _MOTO_LINT, cache)
    return cache


def _serialize_dynamodb(app: Callable[..., Any]) -> Callable[..., Any]:
    """A WSGI wrapper that runs DynamoDB requests one at a time.

    DynamoDB applies a conditional write atomically; moto's threaded server checks the condition and
    writes without a lock, so two concurrent PutItems conditioned on the same version could both
    succeed (seen: ten concurrent watcher checks recorded two region-recovery transitions). jams-dr's
    exactly-once guarantees rest on that atomicity, so the emulator must keep it.
    """
    lock = threading.Lock()

    def serialized(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if str(environ.get("HTTP_X_AMZ_TARGET", "")).startswith("DynamoDB_"):
            with lock:
                return list(app(environ, start_response))  # the body is produced inside the lock
        return app(environ, start_response)

    return serialized


def _atomic_dynamodb_server() -> Any:
    """moto's ThreadedMotoServer on a free loopback port, with DynamoDB requests serialized."""
    # Heavy imports, never on the Lambda path. _server_entry mirrors moto 5.2's own, plus the wrapper.
    from moto.moto_server.werkzeug_app import (  # noqa: PLC0415
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from moto.server import ThreadedMotoServer  # noqa: PLC0415
    from werkzeug.serving import make_server  # noqa: PLC0415

    class AtomicDynamoDbServer(ThreadedMotoServer):
        def _server_entry(self) -> None:
            app = _serialize_dynamodb(DomainDispatcherApplication(create_backend_app))
            self._server = make_server(self._ip_address, self._port, app, True, request_handler=MotoRequestHandler)
            self._server_ready_event.set()
            self._server.serve_forever()

    return AtomicDynamoDbServer(ip_address="127.0.0.1", port=0, verbose=False)


class EmbeddedAws:
    """moto's ThreadedMotoServer on 127.0.0.1 plus a client factory for it."""

    def __init__(self, *, fast_retries: bool = True) -> None:
        self._server = _atomic_dynamodb_server()
        self._fast_retries = fast_retries
        self.endpoint = ""
        self.clients: ClientFactory | None = None
        self._down: dict[str, str] = {}
        self._saved_env: dict[str, str | None] = {}
        self._lint_cache: _TemplateLintCache | None = None
        self._faults = FaultInjector()

    def start(self) -> ClientFactory:
        # werkzeug logs every request of moto's server: noise in a drill's live view.
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        public_parameters.install()
        network_fidelity.install()
        traffic_emulation.install()
        rds_fidelity.install()
        pitr_fidelity.install()
        quota_fidelity.install()
        changeset_fidelity.install()
        self._lint_cache = _install_lint_cache(load=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        # Credentials for botocore's signer only; nothing leaves the loopback interface.
        for key, value in {**_FAKE_CREDENTIALS, "AWS_ENDPOINT_URL": self.endpoint}.items():
            self._saved_env[key] = os.environ.get(key)
            os.environ[key] = value
        session = boto3.session.Session(
            aws_access_key_id="testing", aws_secret_access_key="testing", aws_session_token="testing"  # noqa: S106  # nosec B106
        )
        self.clients = ClientFactory(
            session=session,
            endpoint_url=self.endpoint,
            # A dead region must be noticed in milliseconds in a drill; real stages keep the defaults.
            max_attempts=2 if self._fast_retries else 4,
            connect_timeout=1.0,
        )
        set_factory(self.clients)
        self._faults.install(self.clients)
        return self.clients

    def stop(self) -> None:
        # Disarmed but not forgotten: a drill reads injected_faults for its report after the teardown.
        self._faults.clear()
        self._faults.uninstall()
        set_factory(None)
        self._server.stop()
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

    def prelint_template(self, body: str) -> threading.Thread | None:
        """Start linting ``body`` in the background, so a later ValidateTemplate of it answers at once.

        Returns the thread to join, or None when there is nothing to wait for (the body is known clean,
        or the cache is off). Join it before anything timed in real time (heartbeats, detection): the
        lint is seconds of CPU that would otherwise slow them.
        """
        cache = self._lint_cache = self._lint_cache or _install_lint_cache(load=True)
        if cache is None or cache.known_clean(body):
            return None
        thread = threading.Thread(target=cache, args=(body,), name="prelint-template", daemon=True)
        thread.start()
        return thread

    def take_region_down(self, region: str) -> None:
        """Every API of ``region`` now refuses connections, for every client of this process; so do the
        global services whose control plane is there (us-east-1: Route 53's API, IAM, Organizations),
        whatever region their clients name."""
        assert self.clients is not None
        self._down[region] = closed_loopback_endpoint()
        self.clients.set_region_endpoint(region, self._down[region])
        # Replicated automated backups of the region's databases receive no more transaction logs.
        pitr_fidelity.source_region_down(region)
        self._refuse_global_control_planes()

    def bring_region_up(self, region: str) -> None:
        assert self.clients is not None
        self._down.pop(region, None)
        self.clients.set_region_endpoint(region, None)
        pitr_fidelity.source_region_up(region)
        self._refuse_global_control_planes()

    def _refuse_global_control_planes(self) -> None:
        # A Route 53 or IAM client is made for any region, but its API is served by the control plane in
        # us-east-1 (jamsdr/static_stability.py: IAM User Guide and Route 53 Developer Guide, "Resilience").
        self._faults.refuse_services(
            service for service, home in GLOBAL_CONTROL_PLANES.items() if home in self._down)

    def inject_faults(
        self, faults: Iterable[ScenarioFault], *, primary_region: str, recovery_region: str, clock: Clock | None = None
    ) -> list[Fault]:
        """Arm the scenario's faults: the first ``count`` matching API calls from now on fail (jamsdr.faults).

        Faults add to those already armed. ``clock`` stamps ``injected_faults`` (the drill's clock).
        Returns the faults armed, with region names.
        """
        armed = scenario_faults(faults, primary_region=primary_region, recovery_region=recovery_region)
        self._faults.arm(armed, clock=clock)
        return armed

    def fail_monitoring(self, region: str, *, clock: Clock | None = None) -> None:
        """CloudWatch's metric reads in ``region`` refuse connections until cleared; PutMetricData (the
        heartbeats) and every other API keep answering."""
        self._faults.arm([Fault("cloudwatch", region, operation, CONNECTION) for operation in MONITORING_READS],
                         clock=clock)

    def clear_faults(self) -> None:
        """Disarm every fault (``injected_faults`` keeps what was injected)."""
        self._faults.clear()

    @property
    def injected_faults(self) -> tuple[InjectedFault, ...]:
        """Every API call a fault made fail, in order (since the last reset)."""
        return self._faults.injected

    @property
    def fault_injector(self) -> FaultInjector:
        return self._faults

    def reset(self) -> None:
        """Forget every resource (moto's reset endpoint): a fresh world without a new server."""
        import urllib.request  # noqa: PLC0415

        # Lint results stay valid (a function of the template body): keep linting each body once.
        self._lint_cache = self._lint_cache or _install_lint_cache(load=False)
        self._faults.forget()  # a fresh world has no faults armed, and none injected

        # Loopback moto server only: the scheme and host are ours.
        request = urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST")  # noqa: S310
        with urllib.request.urlopen(request, timeout=10):  # noqa: S310 - http://127.0.0.1 only  # nosec B310
            pass


@contextmanager
def embedded_aws(*, fast_retries: bool = True, empty: bool = False) -> Iterator[EmbeddedAws]:
    """An embedded AWS for the block. moto keeps its resources per process, not per server: with
    ``empty`` the block starts from none, even after another world of the same process (a drill run
    earlier whose scheduler instances, tagged like the block's, would otherwise still beat)."""
    aws = EmbeddedAws(fast_retries=fast_retries)
    aws.start()
    if empty:
        aws.reset()
    try:
        yield aws
    finally:
        aws.stop()


@dataclass(frozen=True)
class DatabaseSpec:
    engine: str = "sqlserver-se"
    encrypted: bool = True
    option_group: str = "jams-tde"


@dataclass
class World:
    """What exists after ``build_world``: the stage's settings and every stack's outputs."""

    settings: Settings
    network: dict[str, str] = field(default_factory=dict)
    app: dict[str, str] = field(default_factory=dict)
    standby: dict[str, str] = field(default_factory=dict)
    support: dict[str, str] = field(default_factory=dict)
    forwarding: dict[str, str] = field(default_factory=dict)
    hosted_zone_id: str = ""
    traffic: dict[str, str] = field(default_factory=dict)  # the traffic stack's outputs ({} without DNS)

    def summary(self) -> list[tuple[str, str, str]]:
        s = self.settings
        app, support, standby = self.app, self.support, self.standby
        schedulers = f"{app.get('PrimarySchedulerInstanceId')} / {app.get('FailoverSchedulerInstanceId')}"
        return [
            (s.primary_region, s.network_stack_name, f"VPC {self.network.get('VpcId')}"),
            (s.primary_region, s.app_stack_name,
             f"database {app.get('DatabaseInstanceId')}, schedulers {schedulers}"),
            (s.primary_region, f"{s.environment}-event-forwarding", f"rule {self.forwarding.get('RuleArn')}"),
            (s.recovery_region, f"{s.environment}-dr-support",
             f"ledger {support.get('LedgerTableName')}, key {support.get('CopyKeyAlias')}"),
            (s.recovery_region, s.standby_stack_name,
             f"VPC {standby.get('VpcId')}, pinned {standby.get('PinnedSnapshotIdentifier')}"),
        ]


def build_world(
    clients: ClientFactory,
    base: Settings,
    *,
    vpc_cidr: str = "10.0.0.0/16",
    database: DatabaseSpec | None = None,
    dns_zone_name: str = "jams.example.internal",
    dns: bool = True,
) -> World:
    """Build the primary environment, the support resources and the standby stack."""
    db = database or DatabaseSpec()
    env = base.environment
    primary, recovery = base.primary_region, base.recovery_region
    cidrs = _subnet_cidrs(vpc_cidr)

    zone_id = ""
    if dns:  # without: a stage with no HOSTED_ZONE_ID, whose switch_traffic is skipped
        route53 = clients.client("route53", recovery)
        zone = route53.create_hosted_zone(Name=dns_zone_name, CallerReference=f"{env}-{dns_zone_name}")
        zone_id = zone["HostedZone"]["Id"].split("/")[-1]

    support = deploy_stack(clients, recovery, f"{env}-dr-support", "dr-support.yaml",
                           {"EnvironmentName": env, "RpoTargetSeconds": str(base.rpo_target_seconds)})
    forwarding = deploy_stack(clients, primary, f"{env}-event-forwarding", "event-forwarding.yaml",
                              {"EnvironmentName": env, "RecoveryRegion": recovery})

    network_params = {"EnvironmentName": env, "VpcCidr": vpc_cidr, **cidrs, "DBEngine": db.engine}
    network = deploy_stack(clients, primary, base.network_stack_name, "jams-network.yaml", network_params)
    standby = deploy_stack(clients, recovery, base.standby_stack_name, "jams-network.yaml",
                           {**network_params, "DBSnapshotIdentifier": ""})

    # The scenario names the primary database's option group (e.g. a TDE group made outside the stack).
    primary_option_group = _ensure_option_group(
        clients, primary, db.engine, db.option_group or network.get("OptionGroupName", ""))
    standby_option_group = _ensure_option_group(clients, recovery, db.engine, standby.get("OptionGroupName", ""))
    network = {**network, "OptionGroupName": primary_option_group}

    app = deploy_stack(
        clients, primary, base.app_stack_name, "jams-app.yaml",
        app_parameters(network, EnvironmentName=env, Mode="active", DBEngine=db.engine,
                       HostedZoneId=zone_id, DnsZoneName=dns_zone_name if dns else "",
                       SchedulerInstanceProfileName=support["SchedulerInstanceProfileName"],
                       DBStorageEncrypted="true" if db.encrypted else "false", **EMULATOR_APP_PARAMETERS),
    )

    s3 = clients.client("s3", recovery)
    s3.put_object(Bucket=support["ArtifactBucketName"], Key=APP_TEMPLATE_KEY,
                  Body=(TEMPLATES / "jams-app.yaml").read_bytes())
    # Stack choices no network output carries; the chain reads them next to the template.
    s3.put_object(Bucket=support["ArtifactBucketName"], Key=APP_PARAMETERS_KEY,
                  Body=json.dumps({"default": EMULATOR_APP_PARAMETERS}).encode())
    traffic_outputs: dict[str, str] = {}
    if dns:
        traffic_outputs = deploy_traffic_stack(
            clients, environment=env, primary_region=primary, recovery_region=recovery, hosted_zone_id=zone_id,
            dns_zone_name=dns_zone_name, standby_outputs=standby, artifact_bucket=support["ArtifactBucketName"])

    settings = Settings.defaults(
        **{
            **{k: getattr(base, k) for k in (
                "primary_region", "recovery_region", "environment", "snapshot_interval_minutes",
                "retain_count", "retain_days", "rpo_target_minutes", "heartbeat_interval_seconds",
                "missed_beat_threshold", "failover_mode", "backup_replication", "recovery_source",
                "network_stack", "app_stack", "standby_stack", "advance_margin_seconds")},
            "db_instance_id": app["DatabaseInstanceId"],
            "copy_kms_key": support["CopyKeyArn"],
            "option_group_map": {primary_option_group: standby_option_group},
            "ledger_table": support["LedgerTableName"],
            "topic_arn": support["TopicArn"],
            "artifact_bucket": support["ArtifactBucketName"],
            "cfn_role_arn": support["CloudFormationRoleArn"],
            "scheduler_instance_profile": support["SchedulerInstanceProfileName"],
            "hosted_zone_id": zone_id,
            "dns_zone_name": dns_zone_name if dns else "",
        }
    )
    return World(settings=settings, network=network, app=app, standby=standby, support=support,
                 forwarding=forwarding, hosted_zone_id=zone_id, traffic=traffic_outputs)


def _subnet_cidrs(vpc_cidr: str) -> dict[str, str]:
    """The seed layout (x.y.1-6.0/24: public, private, isolated drill subnets) inside any /16 the scenario names."""
    import ipaddress  # noqa: PLC0415

    net = ipaddress.ip_network(vpc_cidr, strict=True)
    if net.prefixlen > 20:
        raise ValueError(f"vpc_cidr {vpc_cidr}: needs at least a /20 for six /24 subnets")
    subnets = list(net.subnets(new_prefix=24))
    names = ("PublicSubnet1Cidr", "PublicSubnet2Cidr", "PrivateSubnet1Cidr", "PrivateSubnet2Cidr",
             "DrillSubnet1Cidr", "DrillSubnet2Cidr")
    return {name: str(subnets[i + 1]) for i, name in enumerate(names)}


def _ensure_option_group(clients: ClientFactory, region: str, engine: str, name: str) -> str:
    """The option group ``name`` in ``region``, created through the RDS API when it does not exist.

    moto skips AWS::RDS::OptionGroup in templates (docs/aws-facts.md, "moto 5.2.5: what it skips or
    accepts"); on AWS the stack's group exists.
    """
    if not name:
        raise ValueError(f"no option group name for {region}: the network stack has no OptionGroupName output")
    rds = clients.client("rds", region)
    try:
        rds.describe_option_groups(OptionGroupName=name)
        return name
    except rds.exceptions.OptionGroupNotFoundFault:
        pass
    rds.create_option_group(
        OptionGroupName=name,
        EngineName=engine,
        MajorEngineVersion="15.00",
        OptionGroupDescription="JAMS SQL Server TDE (embedded world)",
    )
    return name


def describe(world: World) -> list[dict[str, Any]]:
    return [{"region": r, "stack": n, "detail": d} for r, n, d in world.summary()]
