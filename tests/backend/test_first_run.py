"""A newcomer's first run: a model that cannot load ends ``groundloop serve`` (and the other commands that load one)
within seconds, with one line naming the model, the reason and the way out; ``copy-models`` writes a directory
that ``serve --model`` then loads without the hub; the README's first screen covers the three machines.

The hub is never the real one: a closed local port stands for an unreachable hub, and a small local server for a
hub that answers (``FakeHub``). Every subprocess gets its own empty Hugging Face cache and home.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Iterator

import pytest

from backend.cli import _parser
from model.sources import GROUNDING_DINO_MODEL_TYPES, ModelSourceError, check_model_source
from tests.support.backend import groundloop_serve
from tests.support.net import free_port, http_server

GROUNDLOOP = str(Path(sys.executable).parent / "groundloop")
FAIL_WITHIN_SECONDS = 10
WAY_OUT = ("--model DIR", "HF_HUB_OFFLINE=1", "groundloop demo")
README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@contextmanager
def fake_hub(repos: dict[str, dict[str, bytes]]) -> Iterator[str]:
    """A hub that answers as huggingface.co does: ``repos`` maps ``owner/name`` to its files. An unknown repository
    is a 401 ``RepoNotFound``, a missing file a 404 ``EntryNotFound``; every other path (the hub's agent list) 404."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_HEAD(self):
            self._answer(body=False)

        def do_GET(self):
            self._answer(body=True)

        def _answer(self, body: bool) -> None:
            match = re.fullmatch(r"/([^/]+/[^/]+)/resolve/[^/]+/(.+)", self.path)
            if match is None:
                return self._error(404, "")
            repo, name = match.groups()
            if repo not in repos:
                return self._error(401, "RepoNotFound")
            if name not in repos[repo]:
                return self._error(404, "EntryNotFound")
            content = repos[repo][name]
            self.send_response(200)
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("ETag", f'"{hashlib.sha1(content).hexdigest()}"')
            self.send_header("Content-Length", str(len(content)))
            self.end_headers()
            if body:
                self.wfile.write(content)

        def _error(self, status: int, code: str) -> None:
            self.send_response(status)
            if code:
                self.send_header("X-Error-Code", code)
            self.send_header("Content-Length", "0")
            self.end_headers()

    with http_server(Handler) as url:
        yield url


def hub_env(tmp_path: Path, endpoint: str, offline: bool = False, cache: Path | None = None) -> dict[str, str]:
    """The environment of a user whose hub is ``endpoint``: online unless ``offline``, with an empty cache (or
    ``cache``); the tests' own HF_HUB_OFFLINE=1 (tests/conftest.py) is not passed on."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(tmp_path / "hf-home"),
               HF_HUB_CACHE=str(cache or tmp_path / "hf-cache"))
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    return env


def unreachable_hub() -> str:
    return f"http://127.0.0.1:{free_port()}"  # nothing listens there: the connection is refused


def run(argv: list[str], env: dict[str, str], timeout: float = 60) -> tuple[int, str, str, float]:
    """``groundloop *argv`` to its end: exit code, stdout, stderr, seconds. Killed (its whole group) past
    ``timeout``, so a serve that did start fails the test instead of hanging it."""
    started = time.monotonic()
    process = subprocess.Popen([GROUNDLOOP, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=env, start_new_session=True)
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        raise AssertionError(f"groundloop {' '.join(argv)} still ran after {timeout} s:\n{out[-2000:]}{err[-2000:]}")
    return process.returncode, out, err, time.monotonic() - started


def serve_argv(tmp_path: Path, model: str, *flags: str) -> list[str]:
    return ["serve", "--data-dir", str(tmp_path / "data"), "--host", "127.0.0.1", "--port", str(free_port()),
            "--device", "cpu", "--model", model, *flags]


def assert_one_line_failure(result: tuple[int, str, str, float], command: str, model: str, reason: str) -> str:
    code, out, err, seconds = result
    lines = err.strip().splitlines()
    assert code == 2, (code, out, err)
    assert seconds < FAIL_WITHIN_SECONDS, f"{seconds:.1f} s"
    assert out == "" and len(lines) == 1, f"stdout {out!r}, stderr:\n{err}"
    line = lines[0]
    assert line.startswith(f"groundloop {command}: cannot load the model {model!r}: "), line
    assert reason in line, line
    assert all(way in line for way in WAY_OUT), line
    return line


def bert_model_dir(path: Path) -> Path:
    """A tiny BERT saved with save_pretrained: a real checkpoint of another architecture."""
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=64, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=16)
    BertModel(config).save_pretrained(path)
    return path


def without_config(small_model_dir: Path, path: Path) -> Path:
    """The small model's files but its config.json (links: nothing large is copied)."""
    path.mkdir()
    for file in small_model_dir.iterdir():
        if file.name != "config.json":
            (path / file.name).symlink_to(file)
    return path


def hub_cache(root: Path, repo_id: str, model_dir: Path) -> Path:
    """A Hugging Face cache (HF_HUB_CACHE) holding ``model_dir`` as ``repo_id`` at main, as a download leaves it."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    for file in model_dir.iterdir():
        (snapshot / file.name).symlink_to(file)
    return root


# --- a model that cannot load: one line, exit 2, within seconds ---------------------------------------------------

def test_an_unreachable_hub_ends_serve_at_once(tmp_path):
    result = run(serve_argv(tmp_path, "nobody/no-such-model"), hub_env(tmp_path, unreachable_hub()))
    line = assert_one_line_failure(result, "serve", "nobody/no-such-model", "cannot be reached")
    assert "Connection refused" in line and "has no copy of it" in line


def test_a_missing_directory_ends_serve_at_once(tmp_path):
    missing = str(tmp_path / "models" / "grounding-dino-tiny")
    result = run(serve_argv(tmp_path, missing), hub_env(tmp_path, unreachable_hub()))
    assert_one_line_failure(result, "serve", missing, "no such directory")


def test_a_model_of_another_architecture_ends_serve_at_once(tmp_path):
    bert = str(bert_model_dir(tmp_path / "bert"))
    result = run(serve_argv(tmp_path, bert), hub_env(tmp_path, unreachable_hub()))
    assert_one_line_failure(result, "serve", bert, "it is a 'bert' model, not Grounding DINO")


def test_a_directory_without_config_ends_serve_at_once(tmp_path, small_model_dir):
    directory = str(without_config(small_model_dir, tmp_path / "no-config"))
    result = run(serve_argv(tmp_path, directory), hub_env(tmp_path, unreachable_hub()))
    assert_one_line_failure(result, "serve", directory, "lacks its config.json")


def test_a_hub_that_answers_no_such_model_bert_or_no_config_ends_serve_at_once(tmp_path):
    bert_config = (bert_model_dir(tmp_path / "bert") / "config.json").read_bytes()
    repos = {"someone/bert": {"config.json": bert_config}, "someone/dataset-like": {"README.md": b"hi"}}
    with fake_hub(repos) as hub:
        env = hub_env(tmp_path, hub)
        cases = [("nobody/no-such-model", "no such model on the hub"),
                 ("someone/bert", "it is a 'bert' model, not Grounding DINO"),
                 ("someone/dataset-like", "has no config.json")]
        for model, reason in cases:
            assert_one_line_failure(run(serve_argv(tmp_path, model), env), "serve", model, reason)


def test_a_cached_model_behind_an_unreachable_hub_says_to_go_offline(tmp_path, small_model_dir):
    cache = hub_cache(tmp_path / "cache", "someone/tiny-gd", small_model_dir)
    result = run(serve_argv(tmp_path, "someone/tiny-gd"), hub_env(tmp_path, unreachable_hub(), cache=cache))
    assert_one_line_failure(result, "serve", "someone/tiny-gd", "has a copy: set HF_HUB_OFFLINE=1")
    check_model_source(small_model_dir)  # the same files as a directory: fine


def test_offline_with_an_empty_cache_names_the_cache(tmp_path):
    env = hub_env(tmp_path, unreachable_hub(), offline=True)
    result = run(serve_argv(tmp_path, "IDEA-Research/grounding-dino-tiny"), env)
    assert_one_line_failure(result, "serve", "IDEA-Research/grounding-dino-tiny",
                            f"the Hugging Face cache ({tmp_path / 'hf-cache'}; HF_HUB_OFFLINE is set) has no copy")


@pytest.mark.parametrize("command", [["worker"], ["train", "--project", "1"], ["predict", "IMAGES", "--classes", "cat",
                                                                             "--out", "OUT"]])
def test_the_other_commands_that_load_a_model_fail_the_same_way(tmp_path, command):
    (tmp_path / "images").mkdir()
    argv = [str(tmp_path / "images") if part == "IMAGES" else str(tmp_path / "out") if part == "OUT" else part
            for part in command]
    missing = str(tmp_path / "no-such-model")
    result = run([*argv, "--data-dir", str(tmp_path / "data"), "--model", missing],
                 hub_env(tmp_path, unreachable_hub()))
    assert_one_line_failure(result, command[0], missing, "no such directory")
    assert not (tmp_path / "out").exists()


def test_the_traceback_shows_with_log_level_debug_only(tmp_path):
    missing = str(tmp_path / "no-such-model")
    code, out, err, _ = run(serve_argv(tmp_path, missing, "--log-level", "DEBUG"), hub_env(tmp_path, unreachable_hub()))
    assert code == 2 and "Traceback" in err and "ModelSourceError" in err
    assert err.strip().splitlines()[-1].startswith(f"groundloop serve: cannot load the model {missing!r}")


def test_the_model_types_accepted_are_those_transformers_loads_as_grounding_dino():
    from transformers.models.auto.modeling_auto import MODEL_FOR_ZERO_SHOT_OBJECT_DETECTION_MAPPING_NAMES as mapping

    grounding_dino = {kind for kind, cls in mapping.items() if cls == "GroundingDinoForObjectDetection"}
    assert grounding_dino == set(GROUNDING_DINO_MODEL_TYPES)


def test_the_segmenter_is_checked_as_a_segmenter(small_model_dir, small_segmenter_dir):
    from model.sources import SEGMENTER

    check_model_source(small_segmenter_dir, SEGMENTER)  # a SAM needs no tokenizer
    with pytest.raises(ModelSourceError, match="it is a 'sam' model, not Grounding DINO"):
        check_model_source(small_segmenter_dir)
    with pytest.raises(ModelSourceError, match="it is a 'grounding-dino' model, not a SAM-family segmenter"):
        check_model_source(small_model_dir, SEGMENTER)


def test_the_segmenter_model_types_are_the_box_promptable_image_models_transformers_loads():
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASK_GENERATION_MAPPING_NAMES as mapping

    from model.sources import SEGMENTER_MODEL_TYPES

    image_models = {kind for kind in mapping if not kind.endswith("_video") and not kind.startswith("sam3")}
    assert image_models == set(SEGMENTER_MODEL_TYPES)


# --- copy-models: a directory that serves without the hub ---------------------------------------------------------

@pytest.mark.slow  # a copy (loads and saves the model), then the real server
def test_copy_models_from_a_directory_writes_one_that_serve_loads(tmp_path, small_model_dir, model_version,
                                                                  small_segmenter_dir, segmenter, small_encoder_dir):
    from model import Segmenter
    from model.sources import CLASSIFIER

    code, out, err, _ = run(["copy-models", "--to", str(tmp_path / "models"), "--model", str(small_model_dir),
                             "--segmenter", str(small_segmenter_dir), "--classifier-backbone", str(small_encoder_dir),
                             "--data-dir", str(tmp_path / "data")],
                            hub_env(tmp_path, unreachable_hub()))
    assert code == 0, err
    models = tmp_path / "models"
    copy, segmenter_copy = models / small_model_dir.name, models / small_segmenter_dir.name
    encoder_copy = models / small_encoder_dir.name
    assert f"groundloop serve --model {copy} --segmenter {segmenter_copy} --classifier-backbone {encoder_copy}\n" in out
    assert f"GROUNDLOOP_MODEL={copy} GROUNDLOOP_SEGMENTER={segmenter_copy} " in out
    # no partial left beside them
    assert sorted(p.name for p in models.iterdir()) == sorted(
        [small_model_dir.name, small_segmenter_dir.name, small_encoder_dir.name])
    assert Segmenter.load(segmenter_copy, device="cpu").version_digest == segmenter.version_digest
    check_model_source(encoder_copy, CLASSIFIER)
    with groundloop_serve(tmp_path, "--no-worker", "--model", str(copy)) as server:
        assert server.model_version == model_version  # the same name and the same weights as the source


@pytest.mark.slow  # a copy (loads and saves the model), then loads it again
def test_copy_models_from_the_hub_cache_writes_a_directory_with_the_same_weights(tmp_path, small_model_dir, detector):
    from model import Detector

    cache = hub_cache(tmp_path / "cache", "someone/tiny-gd", small_model_dir)
    env = hub_env(tmp_path, unreachable_hub(), offline=True, cache=cache)
    code, out, err, _ = run(["copy-models", "--to", str(tmp_path / "models"), "--model", "someone/tiny-gd",
                             "--skip", "segmenter", "--skip", "classifier", "--data-dir", str(tmp_path / "data")], env)
    assert code == 0, err
    copy = tmp_path / "models" / "tiny-gd"
    assert f"groundloop serve --model {copy}\n" in out
    assert not any(path.is_symlink() for path in copy.iterdir())  # real files: the directory travels alone
    check_model_source(copy)
    assert Detector.load(copy, device="cpu").version_digest == detector.version_digest


def test_copy_models_refuses_a_target_that_exists_and_a_model_that_cannot_load(tmp_path, small_model_dir):
    env = hub_env(tmp_path, unreachable_hub())
    (tmp_path / "models" / small_model_dir.name).mkdir(parents=True)
    code, _, err, _ = run(["copy-models", "--to", str(tmp_path / "models"), "--model", str(small_model_dir)], env)
    assert code == 1 and "exists already" in err

    result = run(["copy-models", "--to", str(tmp_path / "other"), "--model", "nobody/no-such-model"], env)
    assert_one_line_failure(result, "copy-models", "nobody/no-such-model", "cannot be reached")
    assert not (tmp_path / "other").exists()


# --- the README's first screen and command table --------------------------------------------------------------------

def test_the_readme_first_screen_covers_gpu_cpu_docker_and_no_hub():
    first_screen = README.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    for needed in ("bash scripts/serve.sh", "NVIDIA GPU", "https://download.pytorch.org/whl/cpu",
                   "docker compose up -d", "-f docker-compose.yml -f docker-compose.gpu.yml",
                   "groundloop copy-models --to", "--model models/grounding-dino-tiny", "HF_HUB_OFFLINE=1",
                   "groundloop demo"):
        assert needed in first_screen, needed
    assert "CPU build 2.13.0" not in README  # true of our machines' wheel only
    docker = Path(__file__).resolve().parents[2] / "docker"
    assert (docker / "docker-compose.yml").exists() and (docker / "docker-compose.gpu.yml").exists()


def test_the_readme_command_table_lists_every_command():
    table = README.split("## Commands", 1)[1].split("\n## ", 1)[0]
    first_cells = re.findall(r"^\| (.+?) \|", table, re.M)
    listed = {name.split()[0] for cell in first_cells for name in re.findall(r"`([^`]+)`", cell)}
    commands = next(a for a in _parser()._actions if a.dest == "command").choices
    assert listed == set(commands)
