"""``groundloop``: the command line.

    groundloop serve [--port 9090 --box-threshold 0.3 ...]   the ML backend under gunicorn
    groundloop sync --project 3 [...]                         pull one Label Studio project into the store

Every ``Settings`` field is a flag of both commands (``box_threshold`` -> ``--box-threshold``), generated from the
dataclass, so a new setting needs no CLI change. A flag simply overrides the field's environment variable, so the
CLI parses values exactly as the environment does. Precedence: flag > environment > default.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from typing import Sequence

from gunicorn.app.base import BaseApplication

from active_learning.labelstudio import LabelStudioClient, LabelStudioError, sync_project
from active_learning.settings import Settings, env_name
from active_learning.store import Store

WORKER_TIMEOUT = 300
"""Seconds gunicorn lets a worker go silent: it covers loading the model in the worker and one full /predict."""


def main(argv: Sequence[str] | None = None) -> int:
    settings, args = parse(argv)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return args.run(settings, args)


def parse(argv: Sequence[str] | None = None) -> tuple[Settings, argparse.Namespace]:
    """The command line -> the Settings it means (flags over the environment) and the parsed arguments."""
    parser = _parser()
    args = parser.parse_args(argv)
    flags = {env_name(f.name): getattr(args, f.name) for f in dataclasses.fields(Settings)}
    try:
        settings = Settings.from_env({**os.environ, **{k: v for k, v in flags.items() if v is not None}})
    except (TypeError, ValueError) as exc:
        parser.error(str(exc))
    return settings, args


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="groundloop", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    serve = commands.add_parser("serve", help="run the ML backend (gunicorn)")
    serve.set_defaults(run=_serve)
    sync = commands.add_parser("sync", help="pull a Label Studio project's tasks and annotations into the store")
    sync.add_argument("--project", type=int, required=True, help="Label Studio project id")
    sync.set_defaults(run=_sync)
    for command in (serve, sync):
        for f in dataclasses.fields(Settings):
            default = f.default if f.default is not dataclasses.MISSING else None
            command.add_argument(
                "--" + f.name.replace("_", "-"),
                dest=f.name,
                metavar=str(f.type).split("[")[0].upper(),
                help=f"env {env_name(f.name)}; default {default!r}",
            )
    return parser


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    GunicornServer(settings).run()
    return 0


def _sync(settings: Settings, args: argparse.Namespace) -> int:
    try:
        client = LabelStudioClient.from_settings(settings)
        result = sync_project(Store.from_settings(settings), client, args.project)
    except LabelStudioError as exc:
        print(f"groundloop sync: {exc}", file=sys.stderr)
        return 1
    print(result)
    return 0


class GunicornServer(BaseApplication):
    """gunicorn, configured from ``Settings`` instead of a config file.

    The model is loaded in ``load()``, which gunicorn calls in each worker AFTER forking (no ``preload_app``):
    torch's thread pools do not survive a fork, and each worker gets its own copy of the weights. Several
    threads per worker share that copy (``--threads``); detection itself runs one image at a time.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        super().__init__()

    def load_config(self) -> None:
        s = self.settings
        for key, value in {
            "bind": f"{s.host}:{s.port}",
            "workers": s.workers,
            "threads": s.threads,
            "worker_class": "gthread",
            "timeout": WORKER_TIMEOUT,
            "loglevel": s.log_level.lower(),
            "accesslog": "-",
        }.items():
            self.cfg.set(key, value)
        if "control_socket_disable" in self.cfg.settings:  # gunicorn >= 25: one fixed socket path per user
            self.cfg.set("control_socket_disable", True)  # would clash between two servers on one machine

    def load(self):
        from backend.app import create_app

        return create_app(self.settings)


if __name__ == "__main__":
    sys.exit(main())
