"""``groundloop``: the command line.

    groundloop serve [--port 9090 --box-threshold 0.3 ...]   the ML backend under gunicorn, and the training worker
    groundloop worker                                         the training worker alone
    groundloop status [--project 3] [--json]                  deployed versions, training runs, corrections
    groundloop train --project 3 [--processes N]              run a training round now (N: DDP processes)
    groundloop rollback --project 3 --to VERSION              serve an earlier model version again
    groundloop sync --project 3 [...]                         pull one Label Studio project into the store
    groundloop import --project 3 (--voc DIR | --csv FILE --images DIR) [--classes "a,b(alias|alias)"]
    groundloop export --project 3 --format coco|voc --out DIR
    groundloop predict IMAGES_DIR --classes "a,b(alias|alias)" --out DIR [--shard I/N | --merge] [--model ...]
    groundloop demo [--rounds 3 --images-per-round 40 --out DIR]   the whole loop offline, simulated annotator
    groundloop copy-models --to DIR                           every model the configuration names, into DIR

The commands that load a model (serve, worker, train, predict) check it first (``model.sources``: within a
second, no torch, one request to the hub and no retries): a model that cannot load ends them with one line on
stderr naming it, why, and what to do, exit code 2 (the traceback too with ``--log-level DEBUG``).

Each command imports what it needs when it runs (torch only where a model is loaded), so ``--help`` and
``status`` answer at once. Every ``Settings`` field is a flag of every command (``box_threshold`` -> ``--box-threshold``), generated from the
dataclass, so a new setting needs no CLI change. A flag simply overrides the field's environment variable, so the
CLI parses values exactly as the environment does. Precedence: flag > environment > default.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Sequence

from active_learning.settings import Settings, env_name
from active_learning.tools import CSV_COLUMNS, EXPORT_FORMATS
from model.sources import CLASSIFIER, DETECTOR, SEGMENTER, ModelSourceError, check_model_source

MODEL_SETTINGS = (("detector", "model", DETECTOR), ("segmenter", "segmenter", SEGMENTER),
                  ("classifier", "classifier_backbone", CLASSIFIER))
"""(role, Settings field, kind) of every model a configuration names: what ``copy-models`` copies. The segmenter
and the classifier's backbone are not checked before serving: they load only when a project has masks to
pre-annotate or labels sharing a phrase."""

MODEL_WAY_OUT = ("Way out: --model DIR with a local save_pretrained directory (groundloop copy-models --to DIR "
                 "writes one where the hub is reachable), or HF_HUB_OFFLINE=1 with the model in the Hugging Face "
                 "cache, or groundloop demo to see the loop without any download.")

WORKER_STOP_SECONDS = 30
"""Seconds ``serve`` gives the training worker to stop before killing it."""


def main(argv: Sequence[str] | None = None) -> int:
    settings, args = parse(argv)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.loads_model:  # before gunicorn forks, before the worker starts: fail here, at once
            check_model_source(settings.model)
        return args.run(settings, args)
    except ModelSourceError as exc:
        if logging.getLogger().isEnabledFor(logging.DEBUG):
            traceback.print_exc()
        print(f"groundloop {args.command}: {exc}. {MODEL_WAY_OUT}", file=sys.stderr)
        return 2


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
    parser.set_defaults(loads_model=False)
    commands = parser.add_subparsers(required=True, metavar="COMMAND", dest="command")
    serve = commands.add_parser("serve", help="run the ML backend (gunicorn) and the training worker")
    serve.add_argument("--no-worker", action="store_true", help="do not start the training worker beside it")
    serve.set_defaults(run=_serve, loads_model=True)
    sync = commands.add_parser("sync", help="pull a Label Studio project's tasks and annotations into the store")
    sync.add_argument("--project", type=int, required=True, help="Label Studio project id")
    sync.set_defaults(run=_sync)
    _interchange_commands(commands)
    _training_commands(commands)
    demo = commands.add_parser("demo", help="the whole loop offline: synthetic images, the small model, a "
                                            "simulated annotator, training rounds; a table per round and a plot")
    demo.add_argument("--rounds", type=int, default=3)
    demo.add_argument("--images-per-round", type=int, default=40)
    demo.add_argument("--out", type=Path, default=Path("groundloop-demo"), metavar="DIR",
                      help="results.md, rounds.png, and the demo's data (DIR/data) and starting model")
    demo.set_defaults(run=_demo)
    copy = commands.add_parser("copy-models", help="copy every model the configuration names (--model, "
                                                   "--segmenter, --classifier-backbone) from a "
                                                   "local directory, the hub cache or the hub into DIR, for a "
                                                   "machine that cannot reach the hub; prints the flags using them")
    copy.add_argument("--to", type=Path, required=True, metavar="DIR", help="DIR/<model name> per model")
    copy.add_argument("--skip", action="append", choices=[role for role, _, _ in MODEL_SETTINGS], metavar="ROLE",
                      help="leave this model out (e.g. --skip segmenter when no project draws masks); repeatable")
    copy.set_defaults(run=_copy_models)
    for command in commands.choices.values():
        for f in dataclasses.fields(Settings):
            default = f.default if f.default is not dataclasses.MISSING else None
            command.add_argument(
                "--" + f.name.replace("_", "-"),
                dest=f.name,
                metavar=str(f.type).split("[")[0].upper(),
                help=f"env {env_name(f.name)}; default {default!r}",
            )
    return parser


def _interchange_commands(commands) -> None:
    """``import``, ``export`` and ``predict``: datasets in and out without Label Studio."""
    classes_help = 'classes, comma-separated, aliases in parentheses split by "|": "car(automobile|truck),person"'
    import_ = commands.add_parser("import", help="import Pascal VOC or CSV boxes as a project's training data")
    import_.add_argument("--project", type=int, required=True, help="project id (Label Studio's, or a new one)")
    source = import_.add_mutually_exclusive_group(required=True)
    source.add_argument("--voc", type=Path, metavar="DIR", help="folder of Pascal VOC .xml files (searched deeply)")
    source.add_argument("--csv", type=Path, metavar="FILE", help="CSV: " + ",".join(CSV_COLUMNS))
    import_.add_argument("--images", type=Path, metavar="DIR",
                         help="the images (CSV: required; VOC: default beside the XML or in a sibling folder)")
    import_.add_argument("--classes", type=_classes, help=classes_help + "; creates an unknown project")
    import_.add_argument("--control", metavar="NAME",
                         help="the <RectangleLabels> the boxes belong to (default: the config's first)")
    import_.set_defaults(run=_import)
    export = commands.add_parser("export", help="write a project's human boxes and images as COCO or Pascal VOC")
    export.add_argument("--project", type=int, required=True)
    export.add_argument("--format", choices=EXPORT_FORMATS, required=True)
    export.add_argument("--out", type=Path, required=True, metavar="DIR")
    export.set_defaults(run=_export)
    predict = commands.add_parser("predict", help="pre-label a folder of images into a Label Studio import file")
    predict.add_argument("images_dir", type=Path, metavar="IMAGES_DIR")
    predict.add_argument("--classes", type=_classes, required=True, help=classes_help)
    predict.add_argument("--out", type=Path, required=True, metavar="DIR")
    predict.add_argument("--url-prefix", help="task image URL = prefix + file name; default "
                                              "/data/local-files/?d=<IMAGES_DIR's name>/")
    scale = predict.add_mutually_exclusive_group()
    scale.add_argument("--shard", type=_shard, metavar="I/N",
                       help="only shard I of N (0 <= I < N; split by a hash of each image's path), into --out's "
                            "records and tasks.shard-I-of-N.json / coco.shard-I-of-N.json: one per machine/process")
    scale.add_argument("--merge", action="store_true",
                       help="predict nothing: write tasks.json and coco.json of the whole folder from the records "
                            "the shards left in --out (same classes and settings); fails naming images without one")
    predict.set_defaults(run=_predict, loads_model=True)


def _classes(text: str) -> list:
    from active_learning.labelstudio.config import parse_classes

    try:
        return parse_classes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _import(settings: Settings, args: argparse.Namespace) -> int:
    from active_learning.images import ImageCache
    from active_learning.store import Store
    from active_learning.tools.importing import InterchangeError, import_csv, import_voc

    if args.csv and not args.images:
        print("groundloop import: --csv needs --images DIR", file=sys.stderr)
        return 2
    store, cache = Store.from_settings(settings), ImageCache(settings)
    try:
        if args.voc:
            report = import_voc(store, cache, args.project, args.voc, args.images, args.classes, args.control)
        else:
            report = import_csv(store, cache, args.project, args.csv, args.images, args.classes, args.control)
    except (InterchangeError, OSError) as exc:
        print(f"groundloop import: {exc}", file=sys.stderr)
        return 1
    print(report.summary())
    return 0


def _export(settings: Settings, args: argparse.Namespace) -> int:
    from active_learning.images import ImageCache
    from active_learning.store import Store
    from active_learning.tools.export import export_project
    from active_learning.tools.importing import InterchangeError

    try:
        report = export_project(Store.from_settings(settings), ImageCache(settings), args.project, args.out,
                                args.format)
    except InterchangeError as exc:
        print(f"groundloop export: {exc}", file=sys.stderr)
        return 1
    print(report.summary())
    return 0


def _predict(settings: Settings, args: argparse.Namespace) -> int:
    from active_learning.tools.prelabel import MissingPredictions, prelabel_folder

    if not args.images_dir.is_dir():
        print(f"groundloop predict: {args.images_dir} is not a folder", file=sys.stderr)
        return 1
    try:
        report = prelabel_folder(settings, args.images_dir, args.classes, args.out, args.url_prefix, args.shard,
                                 args.merge)
    except MissingPredictions as exc:
        print(f"groundloop predict --merge: {exc}", file=sys.stderr)
        return 1
    if args.shard:
        index, count = args.shard
        print(f"shard {index}/{count}: {report.summary(args.out)}")
        print(f"wrote {args.out / f'tasks.shard-{index}-of-{count}.json'}; once every shard of {count} has run, "
              f"the same command with --merge instead of --shard writes {args.out / 'tasks.json'}")
        return 0
    print(report.summary(args.out))
    print(f"Label Studio: create the project with {args.out / 'label_config.xml'}:\n"
          f"{(args.out / 'label_config.xml').read_text()}then import {args.out / 'tasks.json'}")
    return 0


def _shard(text: str) -> tuple[int, int]:
    """``--shard I/N`` -> (I, N)."""
    index, slash, count = text.partition("/")
    if not (slash and index.strip().isdecimal() and count.strip().isdecimal()):
        raise argparse.ArgumentTypeError(f"expected I/N such as 0/4, got {text!r}")
    index, count = int(index), int(count)
    if count < 1:
        raise argparse.ArgumentTypeError(f"N must be at least 1, got {text!r}")
    if index >= count:
        raise argparse.ArgumentTypeError(f"I must be below N (shards are numbered 0 to N-1), got {text!r}")
    return index, count


def _training_commands(commands) -> None:
    """``worker``, ``status``, ``train`` and ``rollback``: the training loop from the command line."""
    commands.add_parser("worker", help="run the training worker (rounds when due, or asked for)").set_defaults(
        run=_worker, loads_model=True)
    status = commands.add_parser("status", help="per project: deployed version, training runs, corrections")
    status.add_argument("--project", type=int, help="only this project")
    status.add_argument("--json", action="store_true", help="JSON, as GET /status answers")
    status.set_defaults(run=_status)
    train = commands.add_parser("train", help="queue a training round for a project and run it now, here")
    train.add_argument("--project", type=int, required=True)
    train.add_argument("--processes", type=int, default=1, metavar="N",
                       help="fine-tune on N processes (DDP through accelerate launch: one per GPU, or N CPU "
                            "processes with gloo); default 1, in this process")
    train.set_defaults(run=_train, loads_model=True)
    rollback = commands.add_parser("rollback", help="deploy an earlier model version of a project again")
    rollback.add_argument("--project", type=int, required=True)
    rollback.add_argument("--to", required=True, metavar="VERSION", help="a model version name (see status)")
    rollback.set_defaults(run=_rollback)


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    """gunicorn in this process, the training worker in a child process that stops with it."""
    from backend.server import GunicornServer

    worker = None if args.no_worker else subprocess.Popen(
        [sys.executable, "-m", "backend.cli", "worker", *_settings_flags(args)])
    try:
        GunicornServer(settings).run()  # gunicorn ends with SystemExit when stopped
    finally:
        if worker is not None:
            worker.terminate()  # the worker finishes its poll; a round cut short is failed by its lease
            try:
                worker.wait(timeout=WORKER_STOP_SECONDS)
            except subprocess.TimeoutExpired:
                worker.kill()
    return 0


def _settings_flags(args: argparse.Namespace) -> list[str]:
    """The Settings flags given on this command line, to hand to a child process as they were."""
    return [part for f in dataclasses.fields(Settings) if getattr(args, f.name) is not None
            for part in ("--" + f.name.replace("_", "-"), getattr(args, f.name))]


def _worker(settings: Settings, args: argparse.Namespace) -> int:
    from active_learning.training.worker import Worker

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    Worker(settings).run_forever(stop)
    return 0


def _status(settings: Settings, args: argparse.Namespace) -> int:
    from active_learning.reports.status import collect_status, render_status
    from active_learning.store import Store

    status = collect_status(Store.from_settings(settings), None if args.project is None else [args.project],
                            costs=settings.action_costs())
    print(json.dumps(status, indent=2) if args.json else render_status(status))
    return 0


def _train(settings: Settings, args: argparse.Namespace) -> int:
    from active_learning.store import Store
    from active_learning.training.worker import Worker

    if args.processes < 1:
        print(f"groundloop train: --processes {args.processes}: at least 1", file=sys.stderr)
        return 2
    store = Store.from_settings(settings)
    run_id = store.runs.request(args.project, "cli")
    print(f"run {run_id}: training project {args.project} ...", flush=True)

    def progress(epoch) -> None:
        print(f"  epoch {epoch.epoch}/{settings.epochs}: loss {epoch.train_loss:.4f}, val mAP {epoch.metrics.map:.4f}"
              f" ({epoch.seconds:.0f} s)", flush=True)

    outcome = Worker(settings, store).run_once(project_id=args.project, after_epoch=progress,
                                               processes=args.processes)
    if outcome is None:
        print(f"groundloop train: project {args.project} already has a round running elsewhere; "
              "follow it with groundloop status", file=sys.stderr)
        return 1
    print(f"run {outcome.run_id}: {outcome.status}" + (f" ({outcome.model_version})" if outcome.model_version else "")
          + (f": {outcome.error}" if outcome.error else ""))
    return 1 if outcome.status == "failed" else 0


def _rollback(settings: Settings, args: argparse.Namespace) -> int:
    from active_learning.store import Store
    from active_learning.training.registry import rollback
    from active_learning.training.worker import Worker

    store = Store.from_settings(settings)
    try:
        rollback(store, settings, args.project, args.to)
    except ValueError as exc:
        print(f"groundloop rollback: {exc}", file=sys.stderr)
        return 1
    print(f"project {args.project}: {args.to} is deployed; servers answer with it from their next request")
    Worker(settings, store).publish(args.project)
    return 0


def _demo(settings: Settings, args: argparse.Namespace) -> int:
    """Settings flags given here override the demo's own settings (``--epochs 12``); the rest are ignored."""
    import transformers

    from active_learning.tools.demo import format_table, plot_rows, results_markdown, run_demo

    transformers.logging.disable_progress_bar()
    if args.log_level is None:  # the table is the output; --log-level INFO shows every epoch
        logging.getLogger().setLevel(logging.WARNING)
    overrides = {f.name: getattr(settings, f.name) for f in dataclasses.fields(Settings)
                 if getattr(args, f.name) is not None}
    print(f"groundloop demo: {args.rounds} rounds of {args.images_per_round} images; data in {args.out}", flush=True)
    print(format_table([]), flush=True)
    started = time.monotonic()
    rows = run_demo(args.out, rounds=args.rounds, images_per_round=args.images_per_round,
                    report=lambda row: print(format_table([row]).splitlines()[-1], flush=True), **overrides)
    plot_rows(rows, args.out / "rounds.png")
    command = " ".join(["groundloop demo", "--rounds", str(args.rounds), "--images-per-round",
                        str(args.images_per_round), "--out", str(args.out), *_settings_flags(args)])
    text = results_markdown(rows, "groundloop demo: the model improves as a (simulated) annotator corrects it",
                            command, time.monotonic() - started, "rounds.png")
    (args.out / "results.md").write_text(text)
    print(f"{time.monotonic() - started:.0f} s; wrote {args.out / 'results.md'} and {args.out / 'rounds.png'}")
    return 0


def _copy_models(settings: Settings, args: argparse.Namespace) -> int:
    """Each model of ``MODEL_SETTINGS``, loaded as served and saved into ``--to``/<its name>; all are checked
    before the first (long) copy starts."""
    from model.sources import copy_model, model_short_name

    models = [(role, field, getattr(settings, field), kind) for role, field, kind in MODEL_SETTINGS
              if role not in (args.skip or ())]
    targets = [args.to / model_short_name(source) for _, _, source, _ in models]
    existing = [str(target) for target in targets if target.exists()]
    if existing:
        print(f"groundloop copy-models: {', '.join(existing)} exists already: remove it or choose another --to",
              file=sys.stderr)
        return 1
    for _, _, source, kind in models:
        check_model_source(source, kind)
    for (role, _, source, kind), target in zip(models, targets):
        print(f"{role}: copying {source} to {target} ...", flush=True)
        copy_model(source, target, kind)
    flags = " ".join(f"--{field.replace('_', '-')} {target}" for (_, field, _, _), target in zip(models, targets))
    variables = " ".join(f"{env_name(field)}={target}" for (_, field, _, _), target in zip(models, targets))
    print(f"done; the copies load without the hub (take {args.to} along to a machine without it):\n"
          f"  groundloop serve {flags}\n"
          f"  or: {variables} groundloop serve")
    return 0


def _sync(settings: Settings, args: argparse.Namespace) -> int:
    from active_learning.labelstudio.client import LabelStudioClient, LabelStudioError
    from active_learning.labelstudio.sync import sync_project
    from active_learning.store import Store

    try:
        client = LabelStudioClient.from_settings(settings)
        result = sync_project(Store.from_settings(settings), client, args.project)
    except LabelStudioError as exc:
        print(f"groundloop sync: {exc}", file=sys.stderr)
        return 1
    print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
