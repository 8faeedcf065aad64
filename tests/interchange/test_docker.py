"""docker/: no Docker engine here, so check what can be checked without one: the compose file parses, every command
it runs is a real ``groundloop`` command, every groundloop/Label Studio variable it sets is a Settings field."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path

import pytest
import yaml

from active_learning.settings import Settings, env_name
from backend.cli import main, parse

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
SETTINGS_ENV = {env_name(f.name) for f in dataclasses.fields(Settings)}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DOCKER / "docker-compose.yml").read_text())


def _groundloop_services(compose: dict) -> dict[str, dict]:
    return {name: s for name, s in compose["services"].items() if s.get("command", [""])[0] == "groundloop"}


def test_compose_runs_label_studio_the_server_and_the_worker_on_cpu_and_gpu(compose):
    services = compose["services"]
    assert services["label-studio"]["image"] == "heartexlabs/label-studio:1.23.2"
    ours = _groundloop_services(compose)
    assert {name: (s["profiles"], s["command"][1]) for name, s in ours.items()} == {
        "groundloop": (["cpu"], "serve"), "worker": (["cpu"], "worker"),
        "groundloop-gpu": (["gpu"], "serve"), "worker-gpu": (["gpu"], "worker"),
    }
    for name, service in ours.items():
        gpu = name.endswith("-gpu")
        assert service["build"]["dockerfile"] == ("docker/Dockerfile.gpu" if gpu else "docker/Dockerfile")
        assert (DOCKER.parent / service["build"]["dockerfile"]).is_file()
        assert service["environment"]["GROUNDLOOP_DEVICE"] == ("cuda" if gpu else "cpu")
        assert ("deploy" in service) == gpu
        if gpu:
            [device] = service["deploy"]["resources"]["reservations"]["devices"]
            assert device["capabilities"] == ["gpu"]


def test_every_command_exists_in_the_cli(compose, capsys):
    for name, service in _groundloop_services(compose).items():
        parse(service["command"][1:])  # the flags it passes parse, too
        with pytest.raises(SystemExit) as exit_:
            main([service["command"][1], "--help"])
        assert exit_.value.code == 0, name
    capsys.readouterr()


def test_every_groundloop_variable_is_a_setting_and_the_data_dir_is_a_volume(compose):
    for name, service in _groundloop_services(compose).items():
        env = service["environment"]
        ours = {key for key in env if key.startswith(("GROUNDLOOP_", "LABEL_STUDIO_"))}
        assert ours <= SETTINGS_ENV, f"{name}: {ours - SETTINGS_ENV} are not Settings fields"
        assert {"LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY"} <= ours
        targets = {volume.split(":")[1] for volume in service["volumes"]}
        assert {env["GROUNDLOOP_DATA_DIR"], "/data/images", "/data/models"} <= targets
        assert env["GROUNDLOOP_DATA_DIR"] + "/images" == str(Settings(data_dir=Path("/data")).image_cache_dir)


def test_health_checks_and_the_label_studio_side(compose):
    services = compose["services"]
    for name in ("label-studio", "groundloop", "groundloop-gpu"):
        assert "/health" in " ".join(services[name]["healthcheck"]["test"]), name
    ls_env = services["label-studio"]["environment"]
    # Label Studio must be allowed to call a backend on the compose network and to register its webhook.
    assert ls_env["ML_BLOCK_LOCAL_IP"] == "false" and ls_env["SSRF_PROTECTION_ENABLED"] == "false"
    # Its token is the one groundloop is given.
    assert ls_env["LABEL_STUDIO_USER_TOKEN"].startswith("${LABEL_STUDIO_API_KEY")
    assert "groundloop" in services["groundloop-gpu"]["networks"]["default"]["aliases"]
    assert services["groundloop"]["environment"]["LABEL_STUDIO_URL"] == "http://label-studio:8080"


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.gpu"])
def test_dockerfiles_install_the_pinned_torch_then_the_project(dockerfile):
    text = (DOCKER / dockerfile).read_text()
    pinned = next(d for d in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
                  if d.startswith("torch"))
    assert f"pip install {pinned} --index-url" in text
    if dockerfile == "Dockerfile":
        assert text.startswith("# ") and "FROM python:3.11-slim" in text
        assert "https://download.pytorch.org/whl/cpu" in text
    else:
        assert re.search(r"^FROM nvidia/cuda:\S+-runtime-", text, re.M)
        assert "https://download.pytorch.org/whl/cu" in text
    assert text.index("pip install torch") < text.index("pip install .")
    for source in re.findall(r"^COPY (\S+) ", text, re.M):
        assert (REPO / source).exists(), source
    command = re.search(r'^CMD \["groundloop", "(\w+)"', text, re.M).group(1)
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
