"""The promotion rule: when a candidate replaces the deployed version, and what a round reports as forgotten.

Both pipelines are compared whole (weights, prompt choice and calibrated thresholds, ``serving.prompt_choice``) on
the same validation images: by mAP first, and never at the cost of the annotators' time.
"""

from __future__ import annotations


def decide(candidate_map: float, baseline_map: float, margin: float, candidate_saved: float | None,
           baseline_saved: float | None) -> tuple[bool, str]:
    """Promote only a served pipeline (weights + calibrated thresholds) that beats the deployed one's mAP by the
    margin AND does not save annotators less time on the same validation images."""
    scores = f"val mAP {candidate_map:.4f} vs deployed {baseline_map:.4f} (margin {margin:g})"
    saved = f"time saved {percent(candidate_saved)} vs deployed {percent(baseline_saved)}"
    if candidate_map <= baseline_map + margin:
        return False, f"{scores}: not better"
    if candidate_saved is not None and baseline_saved is not None and candidate_saved < baseline_saved:
        return False, f"{scores}, but {saved}: it would make labeling slower"
    return True, f"{scores}, {saved}"


def ap_drops(before: dict[str, float], after: dict[str, float], margin: float) -> dict[str, list[float]]:
    """Classes whose AP fell by more than ``margin``: where forgetting shows first."""
    return {label: [before[label], after[label]] for label in before
            if label in after and before[label] - after[label] > margin}


def percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f} %"
