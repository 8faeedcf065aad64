"""How much an image needs a human: a score in [0, 1], LOW = look at this first.

Definition. Let t be the box threshold and, for each object query, p its confidence (the score of its best
class). The query's margin is its distance from the decision, normalised by the room on its side:

    m = (t - p) / t          if p < t
    m = (p - t) / (1 - t)    otherwise

The image's score is the smallest margin over all its queries (over all prompts when the classes were
split). 0 means some candidate sits exactly on the threshold; 1 means every query is certainly in or out.

Why. The model's mistakes live at the threshold: a box just above it is the likeliest false positive, one
just below it the likeliest missed object. A human label there changes the pre-annotation most and, once
trained on, moves the decision boundary most. The min rather than a mean, because a single borderline
object is what makes an image worth a look, however many clear ones it holds. The normalisation makes the
score comparable for any threshold. Label Studio's uncertainty sampling serves the LOWEST score first,
which is why low means uncertain. The text threshold is not used: it filters boxes, it is not a confidence.
"""

from __future__ import annotations

import torch

_TINY = 1e-6


def threshold_margin(confidence: torch.Tensor, box_threshold: float) -> torch.Tensor:
    """Image scores from query confidences of shape ``(..., num_queries)``; returns shape ``(...)``.

    An image without queries is certain (1.0).
    """
    if confidence.shape[-1] == 0:
        return torch.ones(confidence.shape[:-1])
    below = confidence < box_threshold
    room = torch.where(below, box_threshold, 1.0 - box_threshold)
    margin = (confidence - box_threshold).abs() / room.clamp(min=_TINY)
    return margin.amin(dim=-1).clamp(0.0, 1.0)
