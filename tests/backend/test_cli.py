"""``groundloop``: every Settings field is a flag, parsed like its environment variable; the training commands."""

import dataclasses
import json
from pathlib import Path

import pytest

from active_learning.settings import Settings
from active_learning.store import Store
from backend.cli import _settings_flags, main, parse
from backend.server import GunicornServer


def test_every_settings_field_is_a_flag_of_every_command():
    for command in (["serve"], ["sync", "--project", "1"], ["worker"], ["status"], ["train", "--project", "1"],
                    ["rollback", "--project", "1", "--to", "v"]):
        _, args = parse(command)
        assert {f.name for f in dataclasses.fields(Settings)} <= set(vars(args))


def test_flags_are_typed_and_beat_the_environment(monkeypatch):
    monkeypatch.setenv("GROUNDLOOP_BOX_THRESHOLD", "0.9")
    monkeypatch.setenv("GROUNDLOOP_PORT", "7000")
    settings, args = parse([
        "serve", "--box-threshold", "0.1", "--data-dir", "/tmp/gl", "--freeze-backbone", "false",
        "--allowed-image-hosts", "a.example, b.example", "--label-studio-url", "http://ls:8080",
    ])
    assert settings.box_threshold == 0.1
    assert settings.port == 7000  # from the environment: no flag given
    assert settings.data_dir == Path("/tmp/gl")
    assert settings.freeze_backbone is False
    assert settings.allowed_image_hosts == ("a.example", "b.example")
    assert settings.label_studio_url == "http://ls:8080"


def test_sync_needs_a_project():
    with pytest.raises(SystemExit):
        parse(["sync"])
    settings, args = parse(["sync", "--project", "3"])
    assert args.project == 3


def test_bad_values_are_refused(capsys):
    with pytest.raises(SystemExit):
        parse(["serve", "--port", "many"])
    assert "GROUNDLOOP_PORT='many' is not a valid int" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse(["serve", "--cpu-precision", "fp16"])
    assert "cpu_precision 'fp16' is not one of auto, bf16, fp32" in capsys.readouterr().err


def test_gunicorn_is_configured_from_settings():
    server = GunicornServer(Settings(host="127.0.0.1", port=9191, workers=2, threads=3))
    assert server.cfg.bind == ["127.0.0.1:9191"]
    assert (server.cfg.workers, server.cfg.threads, server.cfg.worker_class_str) == (2, 3, "gthread")
    assert server.cfg.preload_app is False  # the model is loaded in each worker, after the fork


def test_serve_can_leave_the_worker_out():
    assert parse(["serve"])[1].no_worker is False
    assert parse(["serve", "--no-worker"])[1].no_worker is True


def test_the_worker_gets_the_flags_serve_got():
    _, args = parse(["serve", "--port", "7000", "--box-threshold", "0.1"])
    assert _settings_flags(args) == ["--box-threshold", "0.1", "--port", "7000"]


def _data_dir_flags(tmp_path: Path) -> list[str]:
    return ["--data-dir", str(tmp_path), "--log-level", "WARNING"]


def test_status_shows_projects_as_a_table_and_as_json(tmp_path, capsys):
    store = Store.from_settings(Settings(data_dir=tmp_path))
    store.projects.set_label_config(3, "<View/>")
    store.models.add("groundloop-p3-r1", tmp_path / "m", project_id=3, parent="start",
                            metrics={"val": {"map": 0.25}}, status="deployed")
    run_id = store.runs.request(3, "cli")

    assert main(["status", *_data_dir_flags(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "project 3" in text and "deployed: groundloop-p3-r1" in text
    assert f"{run_id}    queued" in text and "0.250" in text

    assert main(["status", "--project", "3", "--json", *_data_dir_flags(tmp_path)]) == 0
    (project,) = json.loads(capsys.readouterr().out)["projects"]
    assert project["deployed_version"] == "groundloop-p3-r1"
    assert [run["status"] for run in project["training_runs"]] == ["queued"]


def test_rollback_deploys_a_known_version_and_refuses_others(tmp_path, capsys):
    store = Store.from_settings(Settings(data_dir=tmp_path))
    for name in ("groundloop-p3-r1", "groundloop-p3-r2"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text("{}")
        store.models.add(name, tmp_path / name, project_id=3, status="deployed")
    assert main(["rollback", "--project", "3", "--to", "groundloop-p3-r9", *_data_dir_flags(tmp_path)]) == 1
    assert "no model version 'groundloop-p3-r9'" in capsys.readouterr().err
    assert main(["rollback", "--project", "3", "--to", "groundloop-p3-r1", *_data_dir_flags(tmp_path)]) == 0
    assert store.models.deployed(3).name == "groundloop-p3-r1"


def test_train_exits_1_when_the_round_fails(tmp_path, capsys, small_model_dir):
    argv = ["train", "--project", "3", "--model", str(small_model_dir), *_data_dir_flags(tmp_path)]
    assert main(argv) == 1  # nothing labeled: it cannot train
    out = capsys.readouterr().out
    assert "run 1: failed: ValueError: project 3 has no <RectangleLabels>, <BrushLabels> or <PolygonLabels> in its label config" in out
