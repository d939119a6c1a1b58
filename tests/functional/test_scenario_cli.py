"""`jams-dr drill --scenario` refuses what AWS, botocore or a sane file size would refuse: exit status 2, the
field (or the file) named, and no embedded AWS started (issue 18, item 3).

Each case is a file as an operator could pass it, through the real CLI (click's CliRunner); the drill itself
is replaced by a function that fails the test if it is ever called.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import botocore
import pytest
from click.testing import CliRunner

from jamsdr.scenario import MAX_SCENARIO_BYTES

# A file's content, or a function that makes the file at the path it is given (a FIFO, a device...).
Maker = Callable[[Path], Path]


def _content(data: bytes) -> Maker:
    def make(path: Path) -> Path:
        path.write_bytes(data)
        return path

    return make


def _device(name: str) -> Maker:
    return lambda _: Path(name)


def _directory(path: Path) -> Path:
    path.mkdir()
    return path


def _fifo_fed_forever(path: Path) -> Path:
    """A FIFO whose writer never stops (as `yes > fifo`): reading it to the end would never end."""
    os.mkfifo(path)

    def feed() -> None:
        try:
            with path.open("wb") as fifo:  # blocks until the CLI opens the other end
                while True:
                    fifo.write(b" " * 65536)
        except OSError:  # BrokenPipeError once the CLI stops reading and closes its end
            return

    threading.Thread(target=feed, daemon=True).start()
    return path


def _fifo_closed_empty(path: Path) -> Path:
    """A FIFO whose writer opens it and closes it without writing a byte."""
    os.mkfifo(path)

    def close_at_once() -> None:
        with path.open("wb"):  # blocks until the CLI opens the other end
            pass

    threading.Thread(target=close_at_once, daemon=True).start()
    return path


REGION_LIST = ("autoscaling, cloudformation, cloudwatch, dynamodb, ec2, elbv2, events, kms, lambda, rds, s3, sns, sqs, "
               "ssm")
CASES: dict[str, tuple[Maker, str]] = {
    "unknown region": (_content(b'{"primary_region": "zz-fake-9"}'),
                       f"primary_region: 'zz-fake-9' is not a region botocore {botocore.__version__} knows for "
                       f"{REGION_LIST}; use one such as us-east-1"),
    "regions in two partitions": (_content(b'{"recovery_region": "us-gov-west-1"}'),
                                  "recovery_region: 'us-gov-west-1' is in the partition aws-us-gov, primary_region "
                                  "'us-east-1' in aws"),
    "existing snapshots over the quota": (_content(b'{"existing_snapshots": 98}'),
                                          "existing_snapshots: 98 with the drill's own 3 (3 of snapshot_cycles) would "
                                          "make 101 manual snapshots in the primary region, over the RDS quota of 100 "
                                          "per region; at most 97 here"),
    "existing snapshots out of range": (_content(b'{"existing_snapshots": 1000}'),
                                        "existing_snapshots: 1000 must be an integer from 0 to 99"),
    "option group with two hyphens": (_content(b'{"database": {"option_group": "jams--tde"}}'),
                                      "database.option_group: 'jams--tde' must be an option group name as RDS allows"),
    "option group ending with a hyphen": (_content(b'{"database": {"option_group": "jams-tde-"}}'),
                                          "database.option_group: 'jams-tde-' must be an option group name"),
    "duplicate key": (_content(b'{"failure": "az", "failure": "region"}'),
                      "failure: written more than once; JSON keeps only the last value, so write it once"),
    "duplicate key inside a fault": (_content(b'{"faults": [{"service": "sns", "region": "primary", "operation": '
                                              b'"Publish", "error": "5xx", "count": 1, "count": 2}]}'),
                                     "faults[0].count: written more than once"),
    "duplicate key spelt with an escape": (_content(b'{"dns": true, "\\u0064ns": false}'),
                                           "dns: written more than once"),
    "not UTF-8": (_content(b'{"failure": "r\xe9gion"}'), "not UTF-8 text (byte 14); save it as UTF-8 JSON"),
    "a huge file": (_content(b"{" + b" " * MAX_SCENARIO_BYTES + b"}"), "the file is larger than 1 MiB"),
    "/dev/zero": (_device("/dev/zero"), "the file is larger than 1 MiB"),
    "a FIFO fed forever": (_fifo_fed_forever, "the file is larger than 1 MiB"),
    "a FIFO closed empty": (_fifo_closed_empty, "not valid JSON: Expecting value at line 1 column 1"),
    "a directory": (_directory, "cannot read the file: it is a directory"),
}


@pytest.fixture
def no_drill(monkeypatch: pytest.MonkeyPatch) -> None:
    from jamsdr import drill

    def must_not_run(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the embedded drill started on a bad scenario")

    monkeypatch.setattr(drill, "run_embedded_drill", must_not_run)


@pytest.mark.usefixtures("no_drill")
@pytest.mark.parametrize(("make", "message"), CASES.values(), ids=list(CASES))
def test_a_bad_scenario_exits_2_naming_the_field_and_starts_nothing(make: Maker, message: str, tmp_path: Path) -> None:
    from jamsdr import cli

    path = make(tmp_path / "scenario.json")
    reports = tmp_path / "reports"

    result = CliRunner().invoke(cli.main, ["drill", "--scenario", str(path), "--report-dir", str(reports)])

    assert result.exit_code == 2, (result.output, result.exception)
    said = " ".join(result.stderr.split())  # rich wraps long lines
    assert f"scenario {path} is invalid" in said and message in said, said
    assert not reports.exists()


@pytest.mark.usefixtures("no_drill")
def test_a_fifo_nobody_writes_to_is_refused_instead_of_waiting_forever(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from jamsdr import cli, scenario

    monkeypatch.setattr(scenario, "FIFO_WAIT_SECONDS", 0)  # the operator's wait, not the test's
    path = tmp_path / "scenario.json"
    os.mkfifo(path)

    result = CliRunner().invoke(cli.main, ["drill", "--scenario", str(path)])

    assert result.exit_code == 2, (result.output, result.exception)
    assert "nothing was written to this FIFO within 0 s" in result.stderr


@pytest.mark.usefixtures("no_drill")
def test_every_repeated_key_and_every_other_problem_is_listed_at_once(tmp_path: Path) -> None:
    from jamsdr import cli

    path = tmp_path / "scenario.json"
    path.write_bytes(b'{"failure": "az", "database": {"engine": "x", "engine": "sqlserver-ee"}, "failure": "meteor"}')

    result = CliRunner().invoke(cli.main, ["drill", "--scenario", str(path)])

    assert result.exit_code == 2
    lines = [line.strip() for line in " ".join(result.stderr.split()).split(" - ")[1:]]
    assert [line.split(":")[0] for line in lines] == ["failure", "database.engine", "failure"], lines
    assert lines[2] == "failure: 'meteor' must be one of none, region, az, scheduler, monitoring"
