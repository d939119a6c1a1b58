"""Settings of a deployed stage, read from .chalice/config.json the way Chalice merges them."""

from __future__ import annotations

import json
from pathlib import Path

from chalicelib.errors import Refused
from chalicelib.settings import Settings

DEFAULT_CONFIG = Path(".chalice") / "config.json"


class StageError(Refused, ValueError):
    pass


def stage_environment(stage: str, config_path: Path = DEFAULT_CONFIG) -> dict[str, str]:
    """Top-level environment_variables overlaid with the stage's, as `chalice deploy` sets them."""
    try:
        config = json.loads(config_path.read_text())
    except OSError as exc:
        raise StageError(f"cannot read {config_path}: {exc.strerror}; run from the project root") from None
    except json.JSONDecodeError as exc:
        raise StageError(f"{config_path} is not valid JSON: {exc.msg} at line {exc.lineno}") from None
    stages = config.get("stages", {})
    if stage not in stages:
        known = ", ".join(sorted(stages)) or "none"
        raise StageError(f"stage {stage!r} is not in {config_path} (stages: {known})")
    env = {str(k): str(v) for k, v in config.get("environment_variables", {}).items()}
    env.update({str(k): str(v) for k, v in stages[stage].get("environment_variables", {}).items()})
    return env


def stage_settings(stage: str, config_path: Path = DEFAULT_CONFIG) -> Settings:
    return Settings.from_env(stage_environment(stage, config_path))


def function_name(stage: str, handler: str, app_name: str = "jams-dr") -> str:
    """Chalice names each Lambda function <app>-<stage>-<handler>."""
    return f"{app_name}-{stage}-{handler}"
