"""Decide which class each object query shows, from the model's per-token scores.

Grounding DINO scores every query against every TOKEN of the prompt. We score it against every PHRASE
by the mean probability of the phrase's tokens, the way the reference implementation evaluates on COCO
(its "positive map" gives each of a phrase's tokens weight 1/len). Training marks all of a phrase's tokens
as the target, so a query that really shows "traffic light" lights up both tokens and scores high on that
phrase, while the separate phrase "light" (other token positions) stays low. The mean also keeps one
stray token from naming a multi-token phrase.

Aliases pool into their class by max: a query's class is the class of its best phrase and its confidence
is that phrase's score. Phrases come from token positions (``build_label_maps``), never from decoded text.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from transformers.models.grounding_dino.modeling_grounding_dino import build_label_maps


class QueryClasses(NamedTuple):
    """Per query (shape ``(..., num_queries)``): its class, its confidence, whether its phrase is clear."""

    class_id: torch.Tensor
    confidence: torch.Tensor
    passes_text_threshold: torch.Tensor


def phrase_token_masks(input_ids: Sequence[int], max_text_len: int) -> torch.Tensor:
    """A ``(num_phrases, max_text_len)`` bool matrix: which token positions belong to which phrase.

    Uses the model's own delimiter logic (``build_label_maps``), so our phrases are the model's phrases.
    """
    ids = torch.tensor([list(input_ids)])
    (label_map,) = build_label_maps(torch.zeros(1, 1, max_text_len), ids)
    return label_map.bool()


def assign_classes(
    token_probs: torch.Tensor,
    phrase_masks: torch.Tensor,
    phrase_classes: torch.Tensor,
    text_threshold: float,
) -> QueryClasses:
    """Class and confidence of every query.

    token_probs: ``(..., num_queries, max_text_len)`` sigmoid of the model's logits.
    phrase_masks: ``(num_phrases, max_text_len)`` from ``phrase_token_masks``.
    phrase_classes: ``(num_phrases,)`` class index of each phrase.

    ``passes_text_threshold`` is True when EVERY token of the winning phrase has probability above
    ``text_threshold``. The reference post-processing names a box by its tokens above text_threshold; this
    asks that it would have named the whole phrase, so a query that only half-matches "traffic light"
    (strong "light", weak "traffic") does not count as a traffic light.
    """
    masks = phrase_masks.to(token_probs.dtype)
    phrase_scores = token_probs @ (masks / masks.sum(dim=1, keepdim=True)).T  # (..., queries, phrases)
    confidence, best_phrase = phrase_scores.max(dim=-1)
    weakest_token_per_phrase = torch.stack([token_probs[..., mask].amin(dim=-1) for mask in phrase_masks], dim=-1)
    weakest_token = weakest_token_per_phrase.gather(-1, best_phrase.unsqueeze(-1)).squeeze(-1)
    return QueryClasses(
        class_id=phrase_classes[best_phrase],
        confidence=confidence,
        passes_text_threshold=weakest_token > text_threshold,
    )
