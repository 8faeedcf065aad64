import pytest
import torch

from model.uncertainty import threshold_margin


def test_a_candidate_on_the_threshold_scores_zero_and_certain_queries_score_one():
    assert threshold_margin(torch.tensor([0.0, 0.35, 1.0]), 0.35) == pytest.approx(0.0)
    assert threshold_margin(torch.tensor([0.0, 1.0, 0.0]), 0.35) == pytest.approx(1.0)


def test_margins_are_normalised_by_the_room_on_their_side():
    # halfway between 0 and t, and halfway between t and 1, are equally uncertain
    below = threshold_margin(torch.tensor([0.2]), 0.4)
    above = threshold_margin(torch.tensor([0.7]), 0.4)
    assert below == pytest.approx(0.5) and above == pytest.approx(0.5)


def test_the_most_borderline_query_decides_and_lower_means_more_uncertain():
    confidences = torch.tensor([
        [0.01, 0.02, 0.97],  # clear: nothing near the threshold
        [0.01, 0.30, 0.97],  # one candidate just below it
        [0.01, 0.36, 0.97],  # one candidate just above it
    ])
    scores = threshold_margin(confidences, 0.35)
    assert scores.shape == (3,)
    assert ((scores >= 0) & (scores <= 1)).all()
    assert scores[2] < scores[1] < scores[0]


def test_scores_stay_in_range_for_any_threshold():
    torch.manual_seed(0)
    confidences = torch.rand(50, 30)
    for threshold in (0.0, 0.01, 0.5, 0.99, 1.0):
        scores = threshold_margin(confidences, threshold)
        assert ((scores >= 0) & (scores <= 1)).all()


def test_no_queries_is_certain():
    assert threshold_margin(torch.empty(2, 0), 0.35).tolist() == [1.0, 1.0]
