import pytest
import torch

from model import ClassSpec, build_prompts
from model.assignment import assign_classes, phrase_token_masks

T = 32  # max_text_len of the constructed examples


def probs_at(positions: dict[int, float], background: float = 0.01) -> torch.Tensor:
    """One query's token probabilities: ``background`` everywhere but at the given token positions."""
    row = torch.full((T,), background)
    for position, value in positions.items():
        row[position] = value
    return row


def test_phrase_token_masks_follow_the_delimiters():
    # [CLS] traffic light . light . [SEP]
    masks = phrase_token_masks([101, 4026, 2422, 1012, 2422, 1012, 102], T)
    assert masks.shape == (2, T)
    assert masks[0].nonzero().flatten().tolist() == [1, 2]
    assert masks[1].nonzero().flatten().tolist() == [4]


@pytest.fixture
def traffic(tokenizer):
    classes = [ClassSpec("traffic light"), ClassSpec("light")]
    (prompt,) = build_prompts(classes, tokenizer, T)
    assert prompt.input_ids == (101, 4026, 2422, 1012, 2422, 1012, 102)
    return phrase_token_masks(prompt.input_ids, T), torch.tensor(prompt.phrase_classes)


def test_traffic_light_is_not_light(traffic):
    masks, phrase_classes = traffic
    token_probs = torch.stack([
        probs_at({1: 0.9, 2: 0.8}),  # peaks on "traffic light"
        probs_at({4: 0.7}),  # peaks on the separate phrase "light"
        probs_at({1: 0.05, 2: 0.9, 4: 0.6}),  # only the "light" of "traffic light": mean says "light"
    ])
    result = assign_classes(token_probs, masks, phrase_classes, text_threshold=0.25)
    assert result.class_id.tolist() == [0, 1, 1]
    assert result.confidence.tolist() == pytest.approx([0.85, 0.7, 0.6])


def test_aliases_pool_into_their_class(tokenizer):
    classes = [ClassSpec("car", aliases=("automobile",)), ClassSpec("person", aliases=("pedestrian",))]
    (prompt,) = build_prompts(classes, tokenizer, T)
    masks = phrase_token_masks(prompt.input_ids, T)
    position = {phrase: int(masks[i].nonzero()[0]) for i, phrase in enumerate(prompt.phrases)}
    token_probs = torch.stack([
        probs_at({position["automobile"]: 0.8, position["car"]: 0.3, position["person"]: 0.5}),
        probs_at({position["pedestrian"]: 0.6, position["automobile"]: 0.4}),
    ])
    result = assign_classes(token_probs, masks, torch.tensor(prompt.phrase_classes), text_threshold=0.25)
    assert result.class_id.tolist() == [0, 1]
    assert result.confidence.tolist() == pytest.approx([0.8, 0.6])


def test_text_threshold_needs_every_token_of_the_winning_phrase(traffic):
    masks, phrase_classes = traffic
    half_match = probs_at({1: 0.2, 2: 0.9})  # mean 0.55 wins "traffic light", but "traffic" is weak
    token_probs = torch.stack([half_match, probs_at({1: 0.6, 2: 0.5})])
    strict = assign_classes(token_probs, masks, phrase_classes, text_threshold=0.25)
    lenient = assign_classes(token_probs, masks, phrase_classes, text_threshold=0.15)
    assert strict.class_id.tolist() == [0, 0]
    assert strict.passes_text_threshold.tolist() == [False, True]
    assert lenient.passes_text_threshold.tolist() == [True, True]


def test_batched_probabilities_give_the_same_answer_per_image(traffic):
    masks, phrase_classes = traffic
    torch.manual_seed(0)
    token_probs = torch.rand(3, 5, T)  # 3 images, 5 queries
    batched = assign_classes(token_probs, masks, phrase_classes, text_threshold=0.25)
    for image in range(3):
        single = assign_classes(token_probs[image], masks, phrase_classes, text_threshold=0.25)
        for batched_field, single_field in zip(batched, single):
            assert torch.equal(batched_field[image], single_field)
