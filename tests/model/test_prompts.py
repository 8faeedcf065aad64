import logging

from model import ClassSpec, build_prompts
from model.assignment import phrase_token_masks
from model.prompts import phrase_text


def test_phrases_are_lowercased_and_delimiters_do_not_split_a_name(tokenizer):
    (prompt,) = build_prompts([ClassSpec("Mr. Big?", aliases=("U.S.A",)), ClassSpec("Dog")], tokenizer, 256)
    assert prompt.phrases == ("mr big", "u s a", "dog")
    assert prompt.phrase_classes == (0, 0, 1)
    assert prompt.text == "mr big . u s a . dog ."
    # the model sees exactly three phrases, the first two of which are "mr big" and "u s a"
    masks = phrase_token_masks(prompt.input_ids, 256)
    assert masks.shape == (3, 256)
    words = [tokenizer.decode([prompt.input_ids[i] for i in row.nonzero().flatten()]) for row in masks]
    assert words == ["mr big", "u s a", "dog"]


def test_input_ids_are_what_the_tokenizer_makes_of_the_text(tokenizer):
    classes = [ClassSpec("Traffic light"), ClassSpec("fire-hydrant", aliases=("hydrant",)), ClassSpec("café")]
    (prompt,) = build_prompts(classes, tokenizer, 256)
    assert list(prompt.input_ids) == tokenizer(prompt.text)["input_ids"]


def test_duplicate_aliases_are_dropped_and_empty_names_skipped(tokenizer, caplog):
    with caplog.at_level(logging.WARNING):
        (prompt,) = build_prompts([ClassSpec("Car", aliases=("car", "CAR", "...")), ClassSpec("bus")], tokenizer, 256)
    assert prompt.phrases == ("car", "bus")
    assert prompt.phrase_classes == (0, 1)
    assert "no tokens" in caplog.text


def test_no_classes_give_no_prompts(tokenizer):
    assert build_prompts([], tokenizer, 256) == []


def test_split_past_the_token_limit_keeps_phrases_whole_and_covers_every_class(tokenizer):
    classes = [ClassSpec(f"class {i}", aliases=(f"thing number {i}",)) for i in range(12)]
    prompts = build_prompts(classes, tokenizer, max_text_len=32)

    assert len(prompts) > 1
    assert all(len(prompt.input_ids) <= 32 for prompt in prompts)
    # phrases, in order, each whole in exactly one prompt, each mapped to the class it came from
    expected = [(phrase_text(name), i) for i, spec in enumerate(classes) for name in (spec.name, *spec.aliases)]
    found = [pair for prompt in prompts for pair in zip(prompt.phrases, prompt.phrase_classes)]
    assert found == expected
    for prompt in prompts:
        assert list(prompt.input_ids) == tokenizer(prompt.text)["input_ids"]
        assert len(phrase_token_masks(prompt.input_ids, 32)) == len(prompt.phrases)


def test_a_prompt_is_filled_up_to_exactly_the_limit(tokenizer):
    # "dog" is one token: [CLS] + n * (dog .) + [SEP] = 2 + 2n tokens
    classes = [ClassSpec("dog")] * 15  # 32 tokens: fits max_text_len 32 exactly
    assert len(build_prompts(classes, tokenizer, 32)) == 1
    assert [len(p.input_ids) for p in build_prompts(classes + [ClassSpec("cat")], tokenizer, 32)] == [32, 4]


def test_a_phrase_longer_than_the_limit_is_truncated_with_a_warning(tokenizer, caplog):
    long_name = " ".join(["red"] * 40)
    with caplog.at_level(logging.WARNING):
        prompts = build_prompts([ClassSpec("cat"), ClassSpec(long_name)], tokenizer, 32)
    assert "truncated" in caplog.text
    assert [p.phrase_classes for p in prompts] == [(0,), (1,)]
    assert len(prompts[1].input_ids) == 32
    assert prompts[1].phrases == (" ".join(["red"] * 29),)


def test_special_token_names_do_not_become_delimiters(tokenizer):
    classes = [ClassSpec("[SEP]"), ClassSpec("[CLS]", aliases=("what?",)), ClassSpec("[PAD]")]
    (prompt,) = build_prompts(classes, tokenizer, 256)
    assert len(phrase_token_masks(prompt.input_ids, 256)) == len(prompt.phrases) == 4
