"""Turn Label Studio classes into the text prompts Grounding DINO reads.

Grounding DINO reads one string of phrases separated by '.', e.g. ``"traffic light . car ."``, and scores
every object query against every token. Its modeling code splits the text into phrases at the token ids
of '.', '?', [CLS], [SEP] and [PAD], so a '.' or '?' inside a class name would split that name in two;
we replace them by spaces. A model reads at most ``config.max_text_len`` tokens (256 for the released
checkpoints), so many classes are spread over several prompts, never cutting a phrase in two.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

PHRASE_SEPARATOR = "."
# Characters Grounding DINO treats as phrase boundaries (token ids 1012 and 1029 in BERT's vocabulary).
_DELIMITER_CHARS = re.compile(r"[.?]")


@dataclass(frozen=True)
class ClassSpec:
    """A Label Studio ``<Label>``: its value, plus aliases from the config's ``predicted_values``."""

    name: str
    aliases: tuple[str, ...] = ()
    dropped: tuple[str, ...] = ()
    """Of the name and aliases, those left out of the prompt (prompt choice found they only add false boxes);
    the class keeps its name either way."""

    @property
    def phrases(self) -> tuple[str, ...]:
        """What is searched: the name and the aliases, less the dropped ones."""
        return tuple(p for p in (self.name, *self.aliases) if p not in self.dropped)


@dataclass(frozen=True)
class Prompt:
    """One text for the model, with the class each of its phrases stands for.

    ``input_ids`` are exactly what the tokenizer makes of ``text`` ([CLS] phrase . phrase . [SEP]);
    ``phrase_classes[i]`` is the index (into the ``classes`` given to ``build_prompts``) of ``phrases[i]``.
    """

    text: str
    input_ids: tuple[int, ...]
    phrases: tuple[str, ...]
    phrase_classes: tuple[int, ...]


@dataclass(frozen=True)
class _Phrase:
    text: str
    token_ids: tuple[int, ...]
    class_index: int


def phrase_text(name: str) -> str:
    """Lowercase ``name`` and replace the delimiter characters '.' and '?' by spaces."""
    return " ".join(_DELIMITER_CHARS.sub(" ", name.lower()).split())


def build_prompts(
    classes: Sequence[ClassSpec], tokenizer: PreTrainedTokenizerBase, max_text_len: int
) -> list[Prompt]:
    """Phrases for every class's ``phrases`` (name and aliases, less the dropped ones), packed in order into as few prompts as fit.

    A prompt costs [CLS] + [SEP] plus, per phrase, its tokens and one '.'. A phrase that alone does not
    fit is truncated (with a warning); names that leave no tokens (e.g. "...") are skipped. A class's
    aliases may land in different prompts: the detector merges the boxes of all prompts anyway.
    """
    longest_phrase = max_text_len - 3  # [CLS], the phrase's '.', [SEP]
    phrases: list[_Phrase] = []
    for class_index, spec in enumerate(classes):
        seen: set[str] = set()
        for name in spec.phrases:
            text = phrase_text(name)
            if text in seen:
                continue
            seen.add(text)
            token_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            if not token_ids:
                logger.warning("class %r: name %r has no tokens, skipped", spec.name, name)
                continue
            if len(token_ids) > longest_phrase:
                token_ids = token_ids[:longest_phrase]
                truncated = tokenizer.decode(token_ids)
                logger.warning(
                    "class %r: name %r has more than %d tokens, truncated to %r",
                    spec.name, name, longest_phrase, truncated,
                )
                text = truncated
            phrases.append(_Phrase(text, tuple(token_ids), class_index))

    prompts: list[Prompt] = []
    packed: list[_Phrase] = []
    length = 2  # [CLS] and [SEP]
    for phrase in phrases:
        cost = len(phrase.token_ids) + 1
        if packed and length + cost > max_text_len:
            prompts.append(_prompt(packed, tokenizer))
            packed, length = [], 2
        packed.append(phrase)
        length += cost
    if packed:
        prompts.append(_prompt(packed, tokenizer))
    return prompts


def _prompt(phrases: list[_Phrase], tokenizer: PreTrainedTokenizerBase) -> Prompt:
    separator_id = tokenizer.convert_tokens_to_ids(PHRASE_SEPARATOR)
    input_ids = [tokenizer.cls_token_id]
    for phrase in phrases:
        input_ids += [*phrase.token_ids, separator_id]
    input_ids.append(tokenizer.sep_token_id)
    return Prompt(
        text=" ".join(f"{phrase.text} {PHRASE_SEPARATOR}" for phrase in phrases),
        input_ids=tuple(input_ids),
        phrases=tuple(phrase.text for phrase in phrases),
        phrase_classes=tuple(phrase.class_index for phrase in phrases),
    )
