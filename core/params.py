"""Reading ``params.yaml``, the one configuration file for the pipeline and the services."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def load_params(params_file: Path) -> dict[str, Any]:
    """Load the parameters file.

    Args:
        params_file: Path of ``params.yaml``.

    Returns:
        The parsed mapping.

    Raises:
        ValueError: If the file is missing or is not a YAML mapping.
    """
    if not params_file.is_file():
        raise ValueError(f"parameters file {params_file} does not exist")
    try:
        params = yaml.safe_load(params_file.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"parameters file {params_file} is not valid YAML: {err}") from err
    if not isinstance(params, dict):
        raise ValueError(  # noqa: TRY004 - bad file content is bad input, not a caller's type error
            f"parameters file {params_file} must hold a mapping at the top level")
    return params


def section(params_file: Path, name: str) -> dict[str, Any]:
    """One top-level section of the parameters file.

    Args:
        params_file: Path of ``params.yaml``.
        name: Section name, e.g. ``training``.

    Returns:
        The section's mapping.

    Raises:
        ValueError: If the section is missing or not a mapping.
    """
    value = load_params(params_file).get(name)
    if not isinstance(value, dict):
        raise ValueError(  # noqa: TRY004 - bad file content is bad input
            f"{params_file} has no '{name}' section (or it is not a mapping)")
    return value


FORECAST_TARGETS: dict[str, str] = {"mean": "mean", "peak": "max"}
"""What a forecast step's value is -> how 1-minute telemetry is aggregated to it: ``mean``, the
step's mean request rate; ``peak``, its busiest minute (what the pods must absorb)."""


def forecast_target(params_file: Path) -> str:
    """``training.target`` of the parameters file: ``mean`` (default) or ``peak``.

    Args:
        params_file: Path of ``params.yaml``.

    Returns:
        The forecast target.

    Raises:
        ValueError: If the file has no training section or the target is unknown.
    """
    target = section(params_file, "training").get("target", "mean")
    if target not in FORECAST_TARGETS:
        raise ValueError(
            f"{params_file}: training.target must be one of {sorted(FORECAST_TARGETS)}, "
            f"got {target!r}"
        )
    return str(target)
