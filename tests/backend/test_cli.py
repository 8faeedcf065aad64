"""``groundloop``: every Settings field is a flag, parsed like its environment variable."""

import dataclasses
from pathlib import Path

import pytest

from active_learning.settings import Settings
from backend.cli import GunicornServer, parse


def test_every_settings_field_is_a_flag_of_both_commands():
    for command in (["serve"], ["sync", "--project", "1"]):
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


def test_gunicorn_is_configured_from_settings():
    server = GunicornServer(Settings(host="127.0.0.1", port=9191, workers=2, threads=3))
    assert server.cfg.bind == ["127.0.0.1:9191"]
    assert (server.cfg.workers, server.cfg.threads, server.cfg.worker_class_str) == (2, 3, "gthread")
    assert server.cfg.preload_app is False  # the model is loaded in each worker, after the fork
