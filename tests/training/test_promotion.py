"""Promotion compares the whole served pipeline: mAP by the margin, and never a version that saves annotators less
time on the same validation images; per-class AP drops are reported."""

from __future__ import annotations

from active_learning.training.promotion import ap_drops, decide


def test_a_better_map_that_saves_less_time_is_refused():
    promote, why = decide(0.40, 0.30, 0.0, candidate_saved=0.10, baseline_saved=0.25)
    assert not promote and "slower" in why and "10 %" in why and "25 %" in why


def test_better_map_and_no_less_time_saved_is_promoted():
    assert decide(0.40, 0.30, 0.0, candidate_saved=0.25, baseline_saved=0.25)[0]
    assert decide(0.40, 0.30, 0.0, candidate_saved=0.30, baseline_saved=None)[0]  # nothing to compare with


def test_map_must_beat_the_margin_first():
    promote, why = decide(0.32, 0.30, 0.05, candidate_saved=0.9, baseline_saved=0.1)
    assert not promote and "not better" in why


def test_ap_drops_beyond_the_margin_are_reported():
    before = {"car": 0.50, "dent": 0.40, "scratch": 0.10}
    after = {"car": 0.60, "dent": 0.30, "scratch": 0.08}
    assert ap_drops(before, after, margin=0.05) == {"dent": [0.40, 0.30]}
