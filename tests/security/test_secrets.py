"""No secret in what jams-dr writes or ships: drill logs, console output, reports, templates, stage config.

One embedded drill runs through the CLI (as `make drill` does) with everything captured: stdout and
stderr, the run's drill.log (the app's structured logs during the drill), the powertools logger and the
root logger at INFO around it, and every report file. A scanner looks for the credentials in use (the
loopback moto server's dummies) and for anything that looks like a real secret: AWS access key ids,
secret keys, session tokens, passwords, private keys, request signatures. The scanner is proved on
planted secrets, in the same captured files, so the clean result cannot come from a blind scanner.

botocore's own DEBUG logs print signed request headers; jams-dr never enables them (docs/checks.md).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from chalicelib.observability import SERVICE, logger
from jamsdr.embedded import EmbeddedAws

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = ROOT / "templates"
TEMPLATE_NAMES = ("jams-network.yaml", "jams-app.yaml", "dr-support.yaml", "event-forwarding.yaml")

# Published AWS documentation examples: real-looking, never valid.
EXAMPLE_ACCESS_KEY = "AKIAIOSFODNN7EXAMPLE"
EXAMPLE_SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
EXAMPLE_SESSION_TOKEN = "IQoJb3JpZ2luX2VjEFAaCXVzLWVhc3QtMSJHMEUCIQDexampleexampleexampleexample"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:Tried to parse AWS:UserWarning"),
    pytest.mark.filterwarnings("ignore:Unable to delete .*:UserWarning"),
]


# ----------------------------------------------------------------------------------- the scanner


@dataclass(frozen=True)
class Finding:
    kind: str
    source: str
    excerpt: str


# A quote around a key or value, also JSON-escaped (\") or HTML-escaped (&quot;), as in the reports.
_Q = r"""(?:\\?["']|&quot;|&#x27;|&#39;)?"""
_VALUE = r"""([^\s"',}<\\&]+)"""
_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("aws-access-key-id", re.compile(r"(?<![A-Z0-9])(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[A-Z0-9]{16}(?![A-Z0-9])")),
    (
        "aws-secret-key-assignment",
        re.compile(rf"(?i)(?:aws_?secret_?access_?key|secret_?access_?key|SecretAccessKey){_Q}\s*[:=]\s*{_Q}{_VALUE}"),
    ),
    (
        "session-token-assignment",
        re.compile(rf"(?i)(?:aws_?session_?token|x-amz-security-token|SessionToken){_Q}\s*[:=]\s*{_Q}{_VALUE}"),
    ),
    # STS session tokens start with these base64 prefixes (older and current formats).
    ("aws-session-token", re.compile(r"(?:FwoGZXIvYXdzE|IQoJb3JpZ2luX2Vj)[A-Za-z0-9/+=]{16,}")),
    (
        "password-assignment",
        re.compile(rf"(?i)(?<![a-z])(?:master_?user_?password|db_?password|password|passwd|pwd){_Q}\s*[:=]\s*{_Q}{_VALUE}"),
    ),
    ("private-key", re.compile(r"-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----")),
    ("request-signature", re.compile(r"AWS4-HMAC-SHA256 Credential=|X-Amz-Signature=[0-9a-f]{16,}")),
)
# A 40-character base64 run (the shape of an AWS secret access key), judged by entropy so that hex
# digests and identifiers, which use fewer symbols, are not taken for keys.
_BASE64_40 = re.compile(r"(?<![A-Za-z0-9/+=])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])")
_MIN_SECRET_ENTROPY = 4.2


def _is_placeholder(value: str) -> bool:
    """An assignment that holds no secret: empty, a literal null/boolean, a mask, a dynamic reference."""
    return value.lower() in {"null", "none", "true", "false"} or set(value) <= {"*"} or value.startswith("{{resolve:")


def _entropy(text: str) -> float:
    counts = Counter(text)
    return -sum(n / len(text) * math.log2(n / len(text)) for n in counts.values())


def _looks_like_secret_key(candidate: str) -> bool:
    classes = sum(bool(re.search(p, candidate)) for p in ("[a-z]", "[A-Z]", "[0-9]", "[/+]"))
    return classes >= 3 and _entropy(candidate) >= _MIN_SECRET_ENTROPY


def find_secrets(text: str, source: str, known: Mapping[str, str] | None = None) -> list[Finding]:
    """Every secret-looking thing in ``text``; ``known`` maps a label to a credential value in use."""
    found: list[Finding] = []

    def add(kind: str, match: re.Match[str]) -> None:
        start = max(match.start() - 30, 0)
        found.append(Finding(kind, source, text[start : match.end() + 30]))

    for label, value in (known or {}).items():
        if value:
            for match in re.finditer(rf"(?<![A-Za-z0-9/+=]){re.escape(value)}(?![A-Za-z0-9/+=])", text):
                add(f"credential-in-use:{label}", match)
    for kind, pattern in _PATTERNS:
        for match in pattern.finditer(text):
            if not (match.groups() and _is_placeholder(match.group(1))):
                add(kind, match)
    for match in _BASE64_40.finditer(text):
        if _looks_like_secret_key(match.group(0)):
            add("high-entropy-40", match)
    return found


def credentials_in_use() -> dict[str, str]:
    """The credentials this process signs with (the loopback server's dummies under test)."""
    names = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")
    return {name: os.environ[name] for name in names if os.environ.get(name)}


# ----------------------------------------------------------------------------------- one drill


class _Records(logging.Handler):
    """Keeps every formatted record (not a StreamHandler: the drill redirects those to drill.log)."""

    def __init__(self, formatter: logging.Formatter | None) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        if formatter is not None:
            self.setFormatter(formatter)

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@dataclass
class Captured:
    exit_code: int
    report: dict[str, Any]
    texts: dict[str, str]  # source name -> content
    known: dict[str, str]


@pytest.fixture(scope="module")
def captured(tmp_path_factory: pytest.TempPathFactory, moto_server: EmbeddedAws) -> Captured:
    from jamsdr.cli import main

    # moto's state is per process and the drill's server does not clear it: start from nothing.
    moto_server.reset()
    report_root = tmp_path_factory.mktemp("drill-reports")
    app_records = _Records(logger.registered_formatter)
    root_records = _Records(None)
    app_logger, root_logger = logging.getLogger(SERVICE), logging.getLogger()
    previous_root_level = root_logger.level
    app_logger.addHandler(app_records)
    root_logger.addHandler(root_records)
    root_logger.setLevel(logging.INFO)
    try:
        # The embedded AWS signs with the same dummies as the test session (conftest): those are the
        # credentials in use, before, during and after the drill.
        known = credentials_in_use()
        result = CliRunner().invoke(main, ["drill", "--report-dir", str(report_root), "--json"], catch_exceptions=False)
        known.update(credentials_in_use())
    finally:
        root_logger.setLevel(previous_root_level)
        root_logger.removeHandler(root_records)
        app_logger.removeHandler(app_records)
    texts = {"stdout": result.stdout, "stderr": result.stderr, "powertools logger": "\n".join(app_records.lines),
             "root logger": "\n".join(root_records.lines)}
    (run_dir,) = [p for p in report_root.iterdir() if p.is_dir()]
    for path in sorted(run_dir.iterdir()):
        texts[path.name] = path.read_text(encoding="utf-8")
    report = json.loads(texts["report.json"])
    return Captured(result.exit_code, report, texts, known)


def test_the_drill_ran_and_everything_was_captured(captured: Captured) -> None:
    """The scan below is only worth something over a real run's full output.

    Whether the drill met its expectation is not this module's concern (exit 1 is a mismatch, tested with
    the drill itself); a crash or bad input (exit 2) or a run without the recovery chain would leave too
    little output to scan.
    """
    report = captured.report
    summary = f"exit {captured.exit_code}, {report.get('decision')}/{report.get('outcome')}"
    assert captured.exit_code in (0, 1), (summary, captured.texts["stderr"][-2000:])
    assert report["decision"] == "region-recovery" and report["steps"], summary  # the chain ran
    assert {"report.json", "report.md", "report.html", "drill.log"} <= set(captured.texts)
    log_lines = captured.texts["drill.log"].splitlines()
    assert len(log_lines) > 10
    records = [json.loads(line) for line in log_lines]
    # The app's structured logs, its metric records (EMF, which carry no service key), and the emulator's and
    # libraries' records (moto's "No Moto CloudFormation support ...": kept off the console, in drill.log).
    assert all(record.get("service") == SERVICE or "_aws" in record or record.get("source") == "library"
               for record in records)
    assert any(record.get("service") == SERVICE for record in records)
    # The execution appears in the console, the logs and every report: the same text the scanner reads.
    execution = captured.report["execution_id"]
    for source in ("stdout", "drill.log", "report.json", "report.md", "report.html"):
        assert execution in captured.texts[source], source
    # Dummy credentials for the loopback server; the scan looks for their values too.
    assert captured.known.get("AWS_ACCESS_KEY_ID") and captured.known.get("AWS_SECRET_ACCESS_KEY")


def test_no_secret_in_logs_console_output_or_reports(captured: Captured) -> None:
    findings = [f for source, text in captured.texts.items() for f in find_secrets(text, source, captured.known)]
    assert findings == []


@pytest.mark.parametrize(
    ("planted", "kind"),
    [
        (EXAMPLE_ACCESS_KEY, "aws-access-key-id"),
        ("ASIAY34FZKBOKMUTVV7A", "aws-access-key-id"),
        (EXAMPLE_SECRET_KEY, "high-entropy-40"),
        (f"aws_secret_access_key={EXAMPLE_SECRET_KEY}", "aws-secret-key-assignment"),
        (f'"SecretAccessKey": "{EXAMPLE_SECRET_KEY}"', "aws-secret-key-assignment"),
        (f'"SessionToken": "{EXAMPLE_SESSION_TOKEN}"', "session-token-assignment"),
        (EXAMPLE_SESSION_TOKEN, "aws-session-token"),
        ('"MasterUserPassword": "Jams-Adm1n!"', "password-assignment"),
        ("password=hunter2", "password-assignment"),
        ("-----BEGIN RSA PRIVATE KEY-----\nMIIEow...", "private-key"),
        ("Authorization: AWS4-HMAC-SHA256 Credential=x/20260101/us-east-1/rds/aws4_request", "request-signature"),
    ],
)
def test_the_scanner_catches_a_secret_planted_in_each_captured_file(
    captured: Captured, planted: str, kind: str
) -> None:
    for source, text in captured.texts.items():
        if source == "report.json":  # a field of the report, JSON-escaped as the writer would
            tainted = json.dumps({**captured.report, "note": planted}, indent=2)
        else:
            middle = len(text) // 2
            tainted = f"{text[:middle]} {planted} {text[middle:]}"
        kinds = {f.kind for f in find_secrets(tainted, source, captured.known)}
        assert kind in kinds, (source, planted)


def test_the_scanner_catches_the_credentials_in_use(captured: Captured) -> None:
    secret = captured.known["AWS_SECRET_ACCESS_KEY"]
    for source, text in captured.texts.items():
        planted = f"{text}\nsigned with {secret}.\n"
        assert any(f.kind == "credential-in-use:AWS_SECRET_ACCESS_KEY" for f in find_secrets(planted, source, captured.known))


def test_the_scanner_leaves_identifiers_and_digests_alone() -> None:
    """Things a report legitimately holds: ARNs, ids, hashes, timestamps, booleans named like secrets."""
    text = "\n".join([
        "arn:aws:rds:us-west-2:123456789012:snapshot:jams-dr-202601050900-copy",
        "arn:aws:kms:us-west-2:123456789012:key/0d3a4b6c-1f2e-4a5b-9c8d-7e6f5a4b3c2d",
        "sha1 3f786850e387550fdab836ed7e6dc881de23001b",
        "arn:aws:cloudformation:us-west-2:123456789012:stack/jams-app/8a1b2c3d-4e5f-6a7b-8c9d-0e1f2a3b4c5d",
        '"ManageMasterUserPassword": true', "password: null", '"password": ""', "i-0123456789abcdef0",
        "2026-01-05T09:00:00.000Z", "ClientRequestToken=jams-recovery-20260105T090000Z-create",
    ])
    assert find_secrets(text, "sample") == []


# ----------------------------------------------------------------------------------- templates and config

_SECRET_NAME = re.compile(r"(?i)password|passwd|secret|token|credential|private_?key|api_?key")
_SECRET_PROPERTIES = {"MasterUserPassword", "Password", "SecretString", "SecretAccessKey", "AuthToken", "PrivateKey"}
_SAFE_REFERENCE = re.compile(r"^\{\{resolve:(secretsmanager|ssm-secure):")


def template_secret_problems(name: str, text: str) -> list[str]:
    """Secret-handling rules for one CloudFormation template (its text, so the scanner sees comments too)."""
    template = yaml.safe_load(text)
    problems = [f"{name}: {f.kind}: {f.excerpt!r}" for f in find_secrets(text, name)]
    for param, spec in (template.get("Parameters") or {}).items():
        if not _SECRET_NAME.search(param):
            continue
        if not spec.get("NoEcho"):
            problems.append(f"{name}: parameter {param} looks secret but is not NoEcho")
        if spec.get("Default") not in (None, ""):
            problems.append(f"{name}: parameter {param} looks secret and has a Default")

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in _SECRET_PROPERTIES and isinstance(value, str | int) and not _SAFE_REFERENCE.match(str(value)):
                    problems.append(f"{name}: {path}.{key} is a literal; use a NoEcho parameter or {{{{resolve:...}}}}")
                walk(value, f"{path}.{key}")
        elif isinstance(node, list):
            for index, value in enumerate(node):
                walk(value, f"{path}[{index}]")

    walk(template.get("Resources") or {}, "Resources")
    return problems


@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_templates_hold_no_secret(name: str) -> None:
    assert template_secret_problems(name, (TEMPLATES / name).read_text()) == []


def test_the_template_rules_catch_planted_secrets() -> None:
    planted = f"""
Parameters:
  DbPassword:
    Type: String
    Default: Jams-Adm1n!
  ApiToken:
    Type: String
    NoEcho: true
Resources:
  Database:
    Type: AWS::RDS::DBInstance
    Properties:
      MasterUsername: jamsadmin
      MasterUserPassword: Jams-Adm1n!
  Fine:
    Type: AWS::RDS::DBInstance
    Properties:
      MasterUserPassword: "{{{{resolve:secretsmanager:jams/db:SecretString:password}}}}"
  Agent:
    Type: AWS::EC2::Instance
    Properties:
      UserData: "aws configure set aws_access_key_id {EXAMPLE_ACCESS_KEY}"
"""
    problems = template_secret_problems("planted.yaml", planted)
    assert any("parameter DbPassword looks secret but is not NoEcho" in p for p in problems)
    assert any("parameter DbPassword looks secret and has a Default" in p for p in problems)
    assert not any("ApiToken" in p for p in problems)  # NoEcho, no Default: right
    assert any("Resources.Database.Properties.MasterUserPassword is a literal" in p for p in problems)
    assert not any("Resources.Fine" in p for p in problems)  # a dynamic reference is the right way
    assert any("aws-access-key-id" in p for p in problems)
    assert any("password-assignment" in p for p in problems)


def test_stage_config_holds_no_secret() -> None:
    """Lambda environment variables are readable by anyone who can read the function's configuration."""
    text = (ROOT / ".chalice" / "config.json").read_text()
    assert find_secrets(text, "config.json") == []
    config = json.loads(text)
    scopes = [config, *config.get("stages", {}).values()]
    names = [name for scope in scopes for name in scope.get("environment_variables", {})]
    assert names  # the check reads the real structure
    assert [n for n in names if _SECRET_NAME.search(n)] == []


def test_json_mode_prints_the_report_and_nothing_else(captured: Captured) -> None:
    """`drill --json` is for pipes (`| jq`): stdout is one JSON document, the report. The app's metric
    records (Powertools EMF lines, printed to stdout as in Lambda) go to drill.log with its logs."""
    assert json.loads(captured.texts["stdout"]) == captured.report
    assert '"_aws"' in captured.texts["drill.log"]
