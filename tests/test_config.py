"""params.yaml is parsed once into validated sections; unknown keys are refused everywhere."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from core.params import ForescaleConfig, load_config, section
from core.settings import REPO_ROOT


def _write(path: Path, params: dict) -> Path:
    path.write_text(yaml.safe_dump(params))
    return path


def test_the_repository_params_file_is_valid_and_complete() -> None:
    config = load_config(REPO_ROOT / "params.yaml")
    raw = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    assert set(raw) <= set(ForescaleConfig.model_fields)
    assert config.training.target in {"mean", "peak"}


@pytest.mark.parametrize("name", [n for n in ForescaleConfig.model_fields if n != "services"])
def test_an_unknown_key_in_any_section_is_refused_naming_it(tmp_path: Path, name: str) -> None:
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params[name] = {**(params.get(name) or {}), "no_such_key": 1}
    path = _write(tmp_path / "params.yaml", params)
    with pytest.raises(ValueError, match=rf"{path}.*{name}.*no_such_key"):
        load_config(path)


def test_an_unknown_section_and_a_bad_value_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="trainning: unknown key"):
        load_config(_write(tmp_path / "a.yaml", {"trainning": {}}))
    with pytest.raises(ValueError, match=r"schedule.validity_hours: .*greater than 0, got -1"):
        load_config(_write(tmp_path / "b.yaml", {"schedule": {"validity_hours": -1}}))
    with pytest.raises(ValueError, match="service 'web'.*risk"):
        load_config(_write(tmp_path / "c.yaml", {"services": {"web": {"risk": 2}}}))


def test_the_file_is_parsed_once_per_version(tmp_path: Path) -> None:
    path = _write(tmp_path / "params.yaml", {"schedule": {"validity_hours": 3}})
    first = load_config(path)
    assert load_config(path) is first
    _write(path, {"schedule": {"validity_hours": 4.5}})
    assert load_config(path).schedule.validity_hours == 4.5
    assert section(path, "schedule")["validity_hours"] == 4.5
    assert section(path, "training")["backtest_folds"] == 3  # defaults filled in


def test_the_hpa_settings_default_to_kubernetes_and_merge_field_by_field(tmp_path: Path) -> None:
    from core.service_config import HpaSettings, load_service_configs, service_config
    from core.simulation import HpaBehavior, hpa_behavior

    assert hpa_behavior(HpaSettings()) == HpaBehavior()  # Kubernetes' documented defaults
    shipped = service_config(REPO_ROOT / "params.yaml", "any")
    assert hpa_behavior(shipped.hpa) == HpaBehavior()
    assert shipped.pod_startup_seconds == shipped.startup_seconds
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["services"] = {
        "web": {"hpa": {"max_replicas": 12, "scale_down": {"stabilization_window_seconds": 60}}},
        "api": {"hpa": {"pod_startup_seconds": 45, "scale_up": {"select_policy": "Disabled"}}},
    }
    configs = load_service_configs(_write(tmp_path / "params.yaml", params))
    web, api = configs["web"].hpa, configs["api"].hpa
    assert (web.max_replicas, web.min_replicas) == (12, 2)
    assert web.scale_down.stabilization_window_seconds == 60
    assert web.scale_down.policies == shipped.hpa.scale_down.policies  # kept from the defaults
    assert configs["api"].pod_startup_seconds == 45
    assert hpa_behavior(api).scale_up_select == "Disabled"


@pytest.mark.parametrize(
    ("hpa", "message"),
    [
        ({"max_replica": 3}, r"hpa.max_replica: Extra inputs"),
        ({"scale_up": {"policies": [{"type": "Pods", "value": 4, "period": 15}]}}, "period"),
        ({"scale_down": {"select_policy": "Fastest"}}, "select_policy"),
        ({"min_replicas": 5, "max_replicas": 3}, "hpa.min_replicas"),
    ],
)
def test_unknown_or_bad_hpa_settings_are_refused(tmp_path: Path, hpa: dict, message: str) -> None:
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["services"] = {"web": {"hpa": hpa}}
    with pytest.raises(ValueError, match=rf"service 'web'.*{message}"):
        load_config(_write(tmp_path / "params.yaml", params))
