"""CPU inference options for the detector: faster here, and the same answers on a trained model? (issue 16, item 4)

Options, each a drop-in for ``Detector._forward`` (the model call inside ``detect()``):

- ``fp32``: ``Detector._forward`` in full precision (what ``detect()`` did on a CPU before ``--cpu-precision``;
  ``--cpu-precision fp32`` keeps it); the held-out mAP is taken at ``cpu_precision="fp32"`` for every option.
- ``bf16``: the same ``Detector._forward`` with ``model.detector.inference_autocast`` swapped, for the call, for
  ``torch.autocast("cpu", dtype=torch.bfloat16)``: what ``--cpu-precision bf16`` (and ``auto`` on a CPU with
  bfloat16 instructions) does.
- ``compiled``: ``torch.compile(model)`` (inductor, default mode) in a Detector that shares the weights; its first
  call (the compile) is timed separately from the steady state.
- ``onnx``: ``torch.onnx.export(dynamo=True)`` of ``GroundingDinoForObjectDetection`` run by ONNX Runtime (CPU
  provider). Export needs three workarounds, all local to this script (nothing in transformers or ``model/`` is
  changed): the Swin backbone on eager attention (its SDPA path fails torch.export's decomposition: "Cannot view a
  tensor with shape [16, 16, 2, 24] ... as (16, 16, 48)"), the text-mask helper
  ``generate_masks_with_special_tokens_and_transfer_map`` swapped for an equivalent without ``cummax``/``isin``
  (no ONNX function; equality with the original is checked before export), and ``TRANSFORMERS_DISABLE_TORCH_CHECK=1``
  (its ``torch._check`` becomes ``aten._is_all_true``, which has no ONNX function either). Shapes are static: one
  export per (batch, height, width, prompt length), cached for the run, export time reported.

Answers: held-out mAP@[.5:.95] (``model.training.evaluate``: the served ``detect()`` path scored by pycocotools in
``model.evaluation``) of the demo's fine-tuned small model under each option, on the demo's fixed held-out set
(``make_shapes_dataset(40, seed=2)``, as ``active_learning.tools.demo.run_demo`` builds it), against fp32.

Speed: median time of one model forward (``_forward`` on preprocessed pixels, batch 1) of the full-size
grounding-dino-tiny layout (``model.factory.build_full_size_model``, random weights) at shortest edge 512, and of
the small trained model at the demo's 128; options interleaved in one process (fp32, bf16, compiled, onnx, fp32,
...), after warm-up, ``torch.set_num_threads(2)`` and ONNX Runtime on 2 intra-op threads; ratio option/fp32 per
interleaved pair (median, min-max).

Run (a trained model comes from ``groundloop demo --out /tmp/cpu-demo``; if that directory has no deployed
version, the script runs the demo itself with ``run_demo``, a few minutes):

    .venv/bin/python bench/cpu_options_bench.py --demo-dir /tmp/cpu-demo --reps 7

Writes bench/results/cpu_options.md. Needs ``onnxruntime``, ``onnx`` and ``onnxscript`` for the onnx option
(``--options fp32,bf16,compiled`` skips it).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import model.detector as detector_module  # noqa: E402
from active_learning.serving.pool import serving_model  # noqa: E402
from active_learning.store import Store  # noqa: E402
from active_learning.tools.demo import PROJECT, demo_settings, run_demo  # noqa: E402
from model import Detector  # noqa: E402
from model.factory import build_full_size_model  # noqa: E402
from model.prompts import build_prompts  # noqa: E402
from model.synthetic import SHAPE_CLASSES, make_shapes_dataset  # noqa: E402
from model.training import TrainingExample, evaluate  # noqa: E402

OPTIONS = ("fp32", "bf16", "compiled", "onnx")
MAP_TOLERANCE = 0.01
HELDOUT_IMAGES, DEMO_SEED = 40, 0  # run_demo's defaults: held-out = make_shapes_dataset(40, seed=seed + 2)
FULL_SIZE_EDGE, SMALL_EDGE = 512, 128


# --- the trained model and its held-out set ------------------------------------------------------------------

def trained_model(demo_dir: Path) -> tuple[str, str, object]:
    """(path, version name, evaluation settings) of the version the demo deployed; runs the demo if it has none."""
    settings = demo_settings(demo_dir, model=str(demo_dir / "starting-model"))
    deployed = Store.from_settings(settings).models.deployed(PROJECT) if (demo_dir / "data").exists() else None
    if deployed is None:
        print(f"no deployed version in {demo_dir}: running the demo (run_demo) there", flush=True)
        run_demo(demo_dir, rounds=3, images_per_round=40, heldout_images=HELDOUT_IMAGES, seed=DEMO_SEED)
    serving = serving_model(Store.from_settings(settings), settings, PROJECT)
    return serving.source, serving.version, dataclasses.replace(settings.evaluation_settings(), cpu_precision="fp32")


def heldout_set() -> list[TrainingExample]:
    return [TrainingExample(s.image, s.targets)
            for s in make_shapes_dataset(HELDOUT_IMAGES, seed=DEMO_SEED + 2)]


# --- the options -------------------------------------------------------------------------------------------------

def _bf16_autocast(device: torch.device, cpu_precision: str = "fp32"):
    return torch.autocast("cpu", dtype=torch.bfloat16)


@contextlib.contextmanager
def _swapped(owner, name: str, value):
    old = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, old)


def bf16_variant(base: Detector) -> Detector:
    variant = Detector(base.model, base.processor, base.source, base.device, base.version_digest)

    def forward(pixel_values, prompt, cpu_precision="fp32"):
        with _swapped(detector_module, "inference_autocast", _bf16_autocast):
            return Detector._forward(variant, pixel_values, prompt)

    variant._forward = forward
    return variant


def compiled_variant(base: Detector) -> Detector:
    return Detector(torch.compile(base.model), base.processor, base.source, base.device, base.version_digest)


def _onnx_friendly_masks(input_ids: torch.Tensor, special_tokens: torch.Tensor):
    """transformers' ``generate_masks_with_special_tokens_and_transfer_map`` with ``isin`` as a comparison and
    ``cummax``/``cummin`` as masked max/min over an (N, N) triangle: no ONNX function exists for those ops."""
    batch, n = input_ids.shape
    special = (input_ids.unsqueeze(-1) == special_tokens.to(input_ids.device)).any(-1)
    index = torch.arange(n, device=input_ids.device)
    at_or_before = index.unsqueeze(1) >= index.unsqueeze(0)  # [i, j]: j <= i
    previous = torch.where(at_or_before, torch.where(special, index, -1).unsqueeze(1), -1).amax(-1)
    previous = torch.cat([previous.new_full((batch, 1), -1), previous[:, :-1]], dim=1)
    following = torch.where(at_or_before.T, torch.where(special, index, n).unsqueeze(1), n).amin(-1)
    valid = (following != 0) & (following != n - 1) & (following != n)
    attention = (following.unsqueeze(2) == following.unsqueeze(1)) & valid.unsqueeze(1)
    attention = torch.eye(n, dtype=torch.bool, device=input_ids.device).unsqueeze(0) | attention
    position_ids = torch.where(valid, index - previous - 1, 0).clamp(min=0).long()
    return attention, position_ids


class _Logits(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values, input_ids):
        outputs = self.model(pixel_values=pixel_values, input_ids=input_ids,
                             attention_mask=torch.ones_like(input_ids), token_type_ids=torch.zeros_like(input_ids))
        return outputs.logits, outputs.pred_boxes


class OnnxVariant:
    """ONNX Runtime in place of the model call; one static-shape export per input shape (cached)."""

    def __init__(self, base: Detector, work_dir: Path, name: str, threads: int):
        import onnxruntime

        self.base, self.work_dir, self.name = base, work_dir, name
        self.export_model = Detector.load(base.source, device="cpu").model  # a copy: eager Swin attention
        self.export_model.model.backbone.conv_encoder.model.set_attn_implementation("eager")
        self.options = onnxruntime.SessionOptions()
        self.options.intra_op_num_threads, self.options.inter_op_num_threads = threads, 1
        self.sessions: dict[tuple, object] = {}
        self.export_seconds: list[float] = []
        self.detector = Detector(base.model, base.processor, base.source, base.device, base.version_digest)
        self.detector._forward = self.forward

    def _session(self, pixel_values: torch.Tensor, input_ids: torch.Tensor):
        import onnxruntime
        import transformers.models.grounding_dino.modeling_grounding_dino as gd

        key = (*pixel_values.shape, input_ids.shape[1])
        if key not in self.sessions:
            path = self.work_dir / f"{self.name}-{'x'.join(map(str, key))}.onnx"
            check = torch.tensor([[101, 2417, 1012, 2630, 4418, 1012, 102, 0], [101, 1012, 102, 2417, 2675, 1012, 102, 0]])
            special = torch.tensor([101, 102, 1012, 1029])
            for ours, theirs in zip(_onnx_friendly_masks(check, special),
                                    gd.generate_masks_with_special_tokens_and_transfer_map(check, special)):
                assert torch.equal(ours, theirs), "the ONNX-friendly text masks differ from transformers'"
            started = time.perf_counter()
            with _swapped(gd, "generate_masks_with_special_tokens_and_transfer_map", _onnx_friendly_masks), \
                    _env("TRANSFORMERS_DISABLE_TORCH_CHECK", "1"), contextlib.redirect_stdout(sys.stderr):
                torch.onnx.export(_Logits(self.export_model).eval(), (pixel_values, input_ids), str(path),
                                  dynamo=True, input_names=["pixel_values", "input_ids"],
                                  output_names=["logits", "pred_boxes"])
            self.sessions[key] = onnxruntime.InferenceSession(str(path), self.options,
                                                              providers=["CPUExecutionProvider"])
            self.export_seconds.append(time.perf_counter() - started)
        return self.sessions[key]

    def forward(self, pixel_values: torch.Tensor, prompt, cpu_precision: str = "fp32"):
        input_ids = torch.tensor([prompt.input_ids] * len(pixel_values))
        session = self._session(pixel_values, input_ids)
        logits, boxes = session.run(None, {"pixel_values": pixel_values.numpy(), "input_ids": input_ids.numpy()})
        return torch.from_numpy(logits).float().sigmoid(), torch.from_numpy(boxes).float()


@contextlib.contextmanager
def _env(name: str, value: str):
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def make_variants(base: Detector, options, work_dir: Path, name: str, threads: int, failures: dict):
    """{option: Detector}; an option that cannot be built is left out and its error kept in ``failures``."""
    variants = {}
    for option in options:
        try:
            if option == "fp32":
                variants[option] = base
            elif option == "bf16":
                variants[option] = bf16_variant(base)
            elif option == "compiled":
                variants[option] = compiled_variant(base)
            elif option == "onnx":
                variants[option] = OnnxVariant(base, work_dir, name, threads)
        except Exception as exc:  # noqa: BLE001 - the report says which option failed and why
            failures[f"{option} ({name})"] = _error(exc)
    return variants


def _detector(variant) -> Detector:
    return variant.detector if isinstance(variant, OnnxVariant) else variant


def _error(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    summary = text.split("## Exception summary")[-1].strip()
    return " ".join(summary.split())[:600]


# --- measuring ---------------------------------------------------------------------------------------------------

def timing_input(base: Detector, edge: int):
    """Preprocessed pixels (batch 1) of a held-out image at 4:3, resized to shortest edge ``edge``, and the prompt."""
    image = make_shapes_dataset(1, seed=DEMO_SEED + 2)[0].image.resize((round(edge * 4 / 3), edge))
    [(_, pixel_values)] = base._pixel_batches([image], edge)
    [prompt, *_] = build_prompts(SHAPE_CLASSES, base.processor.tokenizer, base.model.config.max_text_len)
    return pixel_values, prompt


def time_options(variants: dict, pixel_values, prompt, reps: int, failures: dict, name: str) -> dict:
    """{option: {"first": s, "times": [s, ...]}}: first call (compile / export) apart, one more warm-up, then
    ``reps`` interleaved rounds."""
    results = {}
    for option, variant in list(variants.items()):
        forward = _detector(variant)._forward
        try:
            started = time.perf_counter()
            forward(pixel_values, prompt)
            first = time.perf_counter() - started
            forward(pixel_values, prompt)
            results[option] = {"first": first, "times": []}
            print(f"  {name} {option}: first call {first:.1f} s", flush=True)
        except Exception as exc:  # noqa: BLE001
            failures[f"{option} ({name}, timing)"] = _error(exc)
            traceback.print_exc()
    for rep in range(reps):
        for option in results:
            forward = _detector(variants[option])._forward
            started = time.perf_counter()
            forward(pixel_values, prompt)
            results[option]["times"].append(time.perf_counter() - started)
        print(f"  {name} rep {rep + 1}/{reps}: " + ", ".join(
            f"{o} {1000 * r['times'][-1]:.0f} ms" for o, r in results.items()), flush=True)
    return results


def ratios(results: dict, option: str) -> list[float]:
    return [t / f for t, f in zip(results[option]["times"], results["fp32"]["times"])]


def heldout_maps(variants: dict, heldout, eval_settings, failures: dict) -> dict:
    maps = {}
    for option, variant in variants.items():
        try:
            started = time.perf_counter()
            maps[option] = evaluate(_detector(variant), heldout, SHAPE_CLASSES, eval_settings).map
            print(f"  held-out mAP {option}: {maps[option]:.4f} ({time.perf_counter() - started:.0f} s)", flush=True)
        except Exception as exc:  # noqa: BLE001
            failures[f"{option} (held-out mAP)"] = _error(exc)
            traceback.print_exc()
    return maps


# --- the report --------------------------------------------------------------------------------------------------

def machine() -> dict:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    fields = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
    flags = set(Path("/proc/cpuinfo").read_text().split("flags", 2)[1].split("\n", 1)[0].split(":", 1)[1].split())
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
    return {
        "model": fields.get("Model name", platform.processor()).strip(),
        "cpus": fields.get("CPU(s)", "?").strip(),
        "flags": ", ".join(f"{f} {'yes' if f in flags else 'no'}" for f in wanted),
        "capability": torch.backends.cpu.get_cpu_capability(),
    }


def _versions() -> str:
    parts = [f"torch {torch.__version__}", f"transformers {transformers.__version__}"]
    for package in ("onnxruntime", "onnx", "onnxscript"):
        try:
            parts.append(f"{package} {__import__(package).__version__}")
        except ImportError:
            parts.append(f"{package} not installed")
    return ", ".join(parts)


def _ms(results: dict, option: str) -> str:
    if option not in results:
        return "failed"
    return f"{1000 * statistics.median(results[option]['times']):.0f}"


def _ratio(results: dict, option: str) -> str:
    if option not in results or "fp32" not in results:
        return "-"
    values = ratios(results, option)
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def adoption(option: str, full: dict, small: dict, maps: dict) -> tuple[bool, str]:
    """Adopt only if every interleaved full-size pair is faster than fp32 AND held-out mAP is within tolerance."""
    if option == "fp32":
        return False, "baseline"
    if option not in full or option not in maps or "fp32" not in maps:
        return False, "no: not measured"
    faster = max(ratios(full, option)) < 1.0
    same = abs(maps[option] - maps["fp32"]) <= MAP_TOLERANCE
    if faster and same:
        return True, "**yes**"
    reasons = ([] if faster else ["not faster"]) + ([] if same else [f"mAP off by > {MAP_TOLERANCE}"])
    return False, "no: " + ", ".join(reasons)


def write_report(path: Path, args, info: dict, load_start, load_end, version: str, model_path: str,
                 full: dict, small: dict, maps: dict, extras: dict, failures: dict, seconds: float) -> str:
    rows = ["| option | full-size ms | ratio vs fp32 (min-max) | small ms | ratio vs fp32 (min-max) | held-out mAP "
            "| mAP diff | faster on every pair and within 0.01 mAP? |", "|---|---|---|---|---|---|---|---|"]
    for option in args.options:
        diff = f"{maps[option] - maps['fp32']:+.4f}" if option in maps and "fp32" in maps else "-"
        rows.append(f"| {option} | {_ms(full, option)} | {_ratio(full, option)} | {_ms(small, option)} | "
                    f"{_ratio(small, option)} | {maps[option]:.4f} | {diff} | {adoption(option, full, small, maps)[1]} |"
                    if option in maps else
                    f"| {option} | {_ms(full, option)} | {_ratio(full, option)} | {_ms(small, option)} | "
                    f"{_ratio(small, option)} | failed | - | {adoption(option, full, small, maps)[1]} |")
    first_calls = [f"{option}: full-size {full[option]['first']:.1f} s, small {small[option]['first']:.1f} s"
                   for option in args.options if option in full and option in small]
    command = "cd /work/main && .venv/bin/python bench/cpu_options_bench.py " + " ".join(args.argv)
    lines = [
        "# CPU inference options: bf16 autocast, torch.compile, ONNX Runtime (issue 16, item 4)",
        "",
        f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; total {seconds / 60:.1f} min",
        f"- machine: {info['model']}, {info['cpus']} CPUs (shared with other work: load average "
        f"{', '.join(f'{x:.2f}' for x in load_start)} at start, {', '.join(f'{x:.2f}' for x in load_end)} at end), "
        f"no GPU; flags: {info['flags']}; torch CPU capability {info['capability']}",
        f"- versions: {_versions()}; {args.threads} torch threads, ONNX Runtime {args.threads} intra-op threads",
        f"- command: `{command}`",
        f"- trained model: the demo's deployed version `{version}` ({model_path}), fine-tuned by `groundloop demo "
        f"--out {args.demo_dir}` (3 rounds of 40 synthetic images); held-out set: the demo's fixed "
        f"{HELDOUT_IMAGES} images (`make_shapes_dataset({HELDOUT_IMAGES}, seed={DEMO_SEED + 2})`), mAP@[.5:.95] by "
        "`model.training.evaluate` (served `detect()` path, pycocotools), at the demo's evaluation settings "
        f"(image size {SMALL_EDGE})",
        f"- speed: one model forward (`Detector._forward`, batch 1, preprocessed pixels, one prompt of the 3 shape "
        f"classes); full-size = `build_full_size_model` (grounding-dino-tiny layout, random weights) at "
        f"{tuple(extras['full_shape'][-2:])} (shortest edge {FULL_SIZE_EDGE}), small = the trained model at "
        f"{tuple(extras['small_shape'][-2:])}; options interleaved, {args.reps} rounds after 2 warm-up calls each; "
        "ms = median; ratio = median of option/fp32 over the interleaved pairs (min-max)",
        "",
        *rows,
        "",
        "First call (compile / export + session creation; not in the medians): " + "; ".join(first_calls) + ".",
    ]
    if extras.get("onnx_export"):
        lines += ["", "ONNX exports (static shapes, each one export + session): " + extras["onnx_export"] + "."]
    if failures:
        lines += ["", "Failures:", ""] + [f"- {where}: `{what}`" for where, what in failures.items()]
    lines += ["", "## Reading these numbers", "", args.reading or extras["reading"], ""]
    text = "\n".join(lines)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return text


def reading(args, full: dict, small: dict, maps: dict) -> str:
    """A generated first reading; the written paragraph (``--reading``) replaces it once the numbers are judged."""
    adopted = [o for o in args.options if adoption(o, full, small, maps)[0]]
    parts = []
    for option in args.options:
        if option == "fp32":
            continue
        parts.append(f"{option}: full-size {_ratio(full, option)} x fp32, small {_ratio(small, option)} x fp32, "
                     f"mAP {maps[option] - maps['fp32']:+.4f}" if option in maps and option in full
                     else f"{option}: not measured")
    verdict = (f"Passing both: {', '.join(adopted)}." if adopted else
               "None passes: no option is both faster on every interleaved pair and within 0.01 mAP.")
    return "; ".join(parts) + ". " + verdict


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo-dir", type=Path, default=Path("/tmp/cpu-demo"))
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/cpu-options"),
                        help="the full-size model and the ONNX exports")
    parser.add_argument("--options", default=",".join(OPTIONS))
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "cpu_options.md")
    parser.add_argument("--reading", default="", help="the 'Reading these numbers' paragraph (default: generated)")
    args = parser.parse_args(argv)
    args.argv = [a for a in (sys.argv[1:] if argv is None else argv)]
    args.argv = [a for i, a in enumerate(args.argv) if a != "--reading" and (i == 0 or args.argv[i - 1] != "--reading")]
    args.options = [o for o in args.options.split(",") if o]
    assert args.options[0] == "fp32", "fp32 (the baseline) must come first"
    load_start, started = os.getloadavg(), time.monotonic()
    torch.set_num_threads(args.threads)
    transformers.logging.disable_progress_bar()
    transformers.logging.set_verbosity_error()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    failures: dict[str, str] = {}
    extras: dict = {}

    model_path, version, eval_settings = trained_model(args.demo_dir)
    print(f"trained model: {version} at {model_path}", flush=True)
    small_base = Detector.load(model_path, device="cpu")
    small = make_variants(small_base, args.options, args.work_dir, "small", args.threads, failures)

    print("held-out mAP per option (small trained model)", flush=True)
    maps = heldout_maps(small, heldout_set(), eval_settings, failures)

    print(f"speed: small trained model at {SMALL_EDGE}", flush=True)
    pixel_values, prompt = timing_input(small_base, SMALL_EDGE)
    extras["small_shape"] = tuple(pixel_values.shape)
    small_times = time_options(small, pixel_values, prompt, args.reps, failures, "small")
    onnx_export = []
    if isinstance(small.get("onnx"), OnnxVariant):
        onnx_export.append("small " + ", ".join(f"{s:.0f} s" for s in small["onnx"].export_seconds))
    del small

    full_path = args.work_dir / "full-size"
    if not (full_path / "config.json").exists():
        build_full_size_model(full_path)
    full_base = Detector.load(full_path, device="cpu")
    full = make_variants(full_base, args.options, args.work_dir, "full", args.threads, failures)
    print(f"speed: full-size architecture at shortest edge {FULL_SIZE_EDGE}", flush=True)
    pixel_values, prompt = timing_input(full_base, FULL_SIZE_EDGE)
    extras["full_shape"] = tuple(pixel_values.shape)
    full_times = time_options(full, pixel_values, prompt, args.reps, failures, "full")
    if isinstance(full.get("onnx"), OnnxVariant):
        onnx_export.append("full-size " + ", ".join(f"{s:.0f} s" for s in full["onnx"].export_seconds))
    extras["onnx_export"] = "; ".join(onnx_export)

    extras["reading"] = reading(args, full_times, small_times, maps)
    text = write_report(args.out, args, machine(), load_start, os.getloadavg(), version, model_path,
                        full_times, small_times, maps, extras, failures, time.monotonic() - started)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
