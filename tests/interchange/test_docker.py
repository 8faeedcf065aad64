"""docker/: no Docker engine here, so check what can be checked without one: the compose files parse, the GPU
override turns the CPU services into GPU ones under Compose's merge rules, every command they run is a real
``groundloop`` command, every groundloop/Label Studio variable they set is a Settings field."""

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
BASE, GPU = "docker-compose.yml", "docker-compose.gpu.yml"
# The only service keys the GPU override may set: for these, _compose_merge follows Compose's rules exactly.
OVERRIDABLE = {"build", "image", "environment", "deploy"}


def _load(name: str) -> dict:
    return yaml.safe_load((DOCKER / name).read_text())


def _compose_merge(base, override):
    """``docker compose -f base -f override`` for the keys OVERRIDABLE allows (the Compose Specification's merge
    rules): mappings merge recursively (``build``, ``deploy`` and ``environment``, which Compose merges variable by
    variable when both files use the mapping form), scalars (``image``) and sequences replace. Other sequences
    (``ports``, ``volumes``, ...) are appended or merged by target in Compose: the override must not set them."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = _compose_merge(base[key], value) if key in base else value
        return merged
    return override


@pytest.fixture(scope="module", params=["cpu", "gpu"])
def variant(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def compose(variant) -> dict:
    """The configuration Compose runs: docker-compose.yml alone on CPU, with docker-compose.gpu.yml on top on GPU."""
    base = _load(BASE)
    return base if variant == "cpu" else _compose_merge(base, _load(GPU))


def _groundloop_services(compose: dict) -> dict[str, dict]:
    return {name: s for name, s in compose["services"].items() if s.get("command", [""])[0] == "groundloop"}


def _merge_keys(node: yaml.Node) -> list[yaml.Node]:
    found, stack, seen = [], [node], set()
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            found += [key for key, _ in node.value if key.tag == "tag:yaml.org,2002:merge"]
            stack += [child for pair in node.value for child in pair]
        elif isinstance(node, yaml.SequenceNode):
            stack += node.value
    return found


@pytest.mark.parametrize("name", [BASE, GPU])
def test_no_yaml_merge_keys(name):
    # Parsers (PyYAML, Compose's Go YAML) disagree on which of several merged maps wins: use none.
    assert _merge_keys(yaml.compose((DOCKER / name).read_text())) == [], name


def test_the_gpu_override_only_sets_keys_compose_merges_as_assumed():
    base, gpu = _load(BASE), _load(GPU)
    assert {key for key in gpu if not key.startswith("x-")} == {"services"}
    assert set(gpu["services"]) == {"groundloop", "worker"}  # overrides, no half-defined new service
    for name, override in gpu["services"].items():
        assert set(override) <= OVERRIDABLE, name
        assert isinstance(override["environment"], dict) and isinstance(base["services"][name]["environment"], dict)
        assert "deploy" not in base["services"][name], name  # so its device list is added, not appended to
    usage = (DOCKER / BASE).read_text().split("\nname:")[0]
    assert "docker compose up -d" in usage and f"docker compose -f {BASE} -f {GPU} up -d" in usage
    assert "--profile" not in usage


def test_compose_runs_label_studio_the_server_and_the_worker_on_cpu_and_gpu(compose, variant):
    services = compose["services"]
    assert services["label-studio"]["image"] == "heartexlabs/label-studio:1.23.2"
    ours = _groundloop_services(compose)
    assert {name: s["command"][1] for name, s in ours.items()} == {"groundloop": "serve", "worker": "worker"}
    assert not any("profiles" in s for s in services.values())
    gpu = variant == "gpu"
    for name, service in ours.items():
        dockerfile = "docker/Dockerfile.gpu" if gpu else "docker/Dockerfile"
        assert service["build"] == {"context": "..", "dockerfile": dockerfile}
        assert (DOCKER / service["build"]["context"] / service["build"]["dockerfile"]).is_file()
        assert service["image"] == ("groundloop:gpu" if gpu else "groundloop:cpu")
        assert service["environment"]["GROUNDLOOP_DEVICE"] == ("cuda" if gpu else "cpu")
        assert ("deploy" in service) == gpu
        if gpu:
            [device] = service["deploy"]["resources"]["reservations"]["devices"]
            assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]


def test_gpu_changes_nothing_but_the_image_the_device_and_the_reservation():
    cpu = _load(BASE)
    gpu = _compose_merge(cpu, _load(GPU))
    def top_level(compose: dict) -> dict:  # the x- extension fields are only anchors' homes
        return {key: value for key, value in compose.items() if key != "services" and not key.startswith("x-")}

    assert top_level(gpu) == top_level(cpu)
    for name, service in gpu["services"].items():
        before = cpu["services"][name]
        assert {k: v for k, v in service.items() if k not in OVERRIDABLE} == \
            {k: v for k, v in before.items() if k not in OVERRIDABLE}, name
        env, env_before = service["environment"], before["environment"]
        assert set(env) == set(env_before), name
        assert {k for k in env if env[k] != env_before[k]} <= {"GROUNDLOOP_DEVICE"}, name


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
    for name in ("label-studio", "groundloop"):
        assert "/health" in " ".join(services[name]["healthcheck"]["test"]), name
    ls_env = services["label-studio"]["environment"]
    # Label Studio must be allowed to call a backend on the compose network and to register its webhook.
    assert ls_env["ML_BLOCK_LOCAL_IP"] == "false" and ls_env["SSRF_PROTECTION_ENABLED"] == "false"
    # Its token is the one groundloop is given.
    assert ls_env["LABEL_STUDIO_USER_TOKEN"].startswith("${LABEL_STUDIO_API_KEY")
    # It connects to http://groundloop:9090, on CPU and GPU alike: the server is the service named groundloop.
    assert "9090:9090" in services["groundloop"]["ports"]
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
