"""Tracking a synthetic video (shapes on known paths, written with OpenCV): one track per object with its label,
keyframes on the true boxes, ``enabled: false`` where a track ends.

The detector here finds the shapes by their colour: the stand-in for trained weights (which cannot be downloaded
here) that makes the truth known; frames, tracker and regions are the real ones.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import supervision as sv

from active_learning.labelstudio.video_regions import regions_from_tracks, tracks_from_result
from active_learning.video.config import TrackingSettings
from active_learning.video.frames import FrameClock, VideoError, probe
from active_learning.video.tracking import OverBudget, track_video
from model.synthetic import SHAPE_CLASSES, write_shapes_video

FRAMES, FPS, WIDTH, HEIGHT = 48, 24.0, 320, 240
COLOURS = {"red square": (0, 0), "blue circle": (2, 2), "green triangle": (1, 1)}  # channel high, others low


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    path = tmp_path_factory.mktemp("video") / "shapes.avi"
    truth = write_shapes_video(path, frames=FRAMES, fps=FPS, width=WIDTH, height=HEIGHT)
    return path, truth


def colour_detector(images):
    """Each shape's bounding box, found by its colour."""
    found = []
    for image in images:
        pixels = np.asarray(image).astype(int)
        boxes, names = [], []
        for name, (channel, _) in COLOURS.items():
            others = [c for c in range(3) if c != channel]
            mask = (pixels[..., channel] > 150) & (pixels[..., others].max(axis=-1) < 90)
            if mask.sum() > 20:
                ys, xs = np.nonzero(mask)
                boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
                names.append(name)
        detections = sv.Detections(xyxy=np.array(boxes, dtype=float).reshape(-1, 4),
                                   confidence=np.full(len(boxes), 0.9), data={"class_name": np.array(names)})
        detections.metadata["uncertainty"] = 0.25
        found.append(detections)
    return found


def truth_box(truth, number: int, name: str):
    frame = truth[number - 1]  # Label Studio's frame n is the file's frame n - 1 at the same rate
    ids = list(frame.class_id)
    class_id = [c.name for c in SHAPE_CLASSES].index(name)
    return frame.xyxy[ids.index(class_id)] if class_id in ids else None


def test_each_object_is_one_track_with_its_label_and_true_keyframes(video):
    path, truth = video
    tracked = track_video(path, colour_detector, FPS, TrackingSettings(stride=4))
    assert sorted(t.label for t in tracked.tracks) == sorted(COLOURS)
    assert tracked.uncertainty == pytest.approx(0.25)
    for track in tracked.tracks:
        assert track.keyframes[-1].enabled is False
        assert all(k.enabled for k in track.keyframes[:-1])  # no gaps: found in every detected frame
        for keyframe in track.keyframes:
            assert np.abs(np.array(keyframe.box) - truth_box(truth, keyframe.frame, track.label)).max() <= 3
    by_label = {t.label: t for t in tracked.tracks}
    # the triangle is in the first half only: its track ends there, the others run to the last detected frame
    assert by_label["green triangle"].keyframes[-1].frame <= FRAMES // 2
    assert by_label["red square"].keyframes[-1].frame == by_label["blue circle"].keyframes[-1].frame == 45
    assert [k.frame for k in by_label["red square"].keyframes] == list(range(1, FRAMES + 1, 4))


def test_tracks_become_label_studio_video_regions_that_read_back(video):
    path, truth = video
    tracked = track_video(path, colour_detector, FPS, TrackingSettings(stride=6))
    regions = regions_from_tracks(tracked.tracks, from_name="box", to_name="video", width=WIDTH, height=HEIGHT,
                                  frames_count=tracked.clock.frames_count, duration=tracked.clock.duration,
                                  framerate=FPS)
    assert len(regions) == 3
    for region in regions:
        assert region["type"] == "videorectangle" and region["from_name"] == "box" and region["to_name"] == "video"
        value = region["value"]
        assert value["framesCount"] == FRAMES and value["duration"] == pytest.approx(FRAMES / FPS)
        assert value["sequence"][-1]["enabled"] is False
        for keyframe in value["sequence"]:
            assert keyframe["time"] == pytest.approx(keyframe["frame"] / FPS)
            assert 0 <= keyframe["x"] <= 100 and 0 <= keyframe["width"] <= 100
    back = tracks_from_result(regions, WIDTH, HEIGHT)
    # between keyframes, Label Studio's interpolation of the keyframes stays near the truth (linear motion)
    for track in back:
        for number in range(track.keyframes[0].frame, track.keyframes[-1].frame + 1):
            assert np.abs(np.array(track.box_at(number)) - truth_box(truth, number, track.label)).max() <= 3


def test_a_different_label_studio_frame_rate_maps_onto_the_files_frames(video):
    path, truth = video
    tracked = track_video(path, colour_detector, 12.0, TrackingSettings(stride=2))  # Label Studio at half the rate
    square = next(t for t in tracked.tracks if t.label == "red square")
    assert tracked.clock.frames_count == FRAMES // 2
    for keyframe in square.keyframes:  # Label Studio's frame n at 12 fps shows the file's frame 2 (n - 1)
        assert np.abs(np.array(keyframe.box) - truth[2 * (keyframe.frame - 1)].xyxy[0]).max() <= 3


def test_a_long_video_gets_a_larger_stride_and_a_deadline_stops_it(video):
    path, _ = video
    tracked = track_video(path, colour_detector, FPS, TrackingSettings(stride=1, max_frames=8))
    assert tracked.stride == 6 and all(len(t.keyframes) <= 8 for t in tracked.tracks)
    with pytest.raises(OverBudget):
        track_video(path, colour_detector, FPS, TrackingSettings(), deadline=time.monotonic())


def test_flickers_are_no_tracks(video):
    path, _ = video

    def flickering(images):
        found = colour_detector(images)
        return [f if i % 2 == 0 else f[np.array([n != "green triangle" for n in f.data["class_name"]], dtype=bool)]
                for i, f in enumerate(found)]

    lone = track_video(path, flickering, FPS, TrackingSettings(stride=4, lost_seconds=0.0, min_keyframes=2))
    assert "green triangle" not in {t.label for t in lone.tracks}  # seen in single frames only, never linked
    kept = track_video(path, flickering, FPS, TrackingSettings(stride=4, lost_seconds=1.0, min_keyframes=2))
    triangle = next(t for t in kept.tracks if t.label == "green triangle")
    assert len(triangle.keyframes) >= 2  # within lost_seconds the track continues across the missed frames
    assert triangle.keyframes[0].enabled is False  # hidden where it was not found, until found again


def test_unreadable_videos_raise_a_one_line_error(tmp_path):
    (tmp_path / "not-a-video.avi").write_bytes(b"\x00" * 1000)
    with pytest.raises(VideoError, match="cannot be opened|has no frames"):
        probe(tmp_path / "not-a-video.avi")
    with pytest.raises(VideoError, match="no such file"):
        probe(tmp_path / "missing.avi")


def test_the_frame_clock_counts_as_label_studio_does():
    from active_learning.video.frames import VideoInfo

    clock = FrameClock(VideoInfo(frame_count=50, fps=25.0, width=8, height=8), framerate=24)
    assert clock.frames_count == 48  # ceil(2 s * 24)
    assert clock.time(24) == pytest.approx(1.0)
    assert clock.index(1) == 0 and clock.index(48) == 48
    assert clock.numbers(stride=10) == [1, 11, 21, 31, 41]
