"""The project schema: what a Label Studio labeling config asks of the detector, read once, used everywhere.

Parsing goes through label-studio-sdk's ``LabelInterface`` (the same parser Label Studio uses). A schema is every
labels control on the config's ``<Image>`` that groundloop pre-annotates: ``<RectangleLabels>`` (boxes),
``<BrushLabels>`` and ``<PolygonLabels>`` (masks: Grounding DINO's boxes prompt the segmenter), each with its
name, classes with aliases and threshold; an optional ``<TextArea>`` on that image whose text is an interactive
detection prompt (as in Label Studio's own Grounding DINO example); and the smart tools an annotator prompts the
segmenter with (``<KeyPointLabels smart="true">``, and ``<RectangleLabels smart="true">`` in a config with masks),
which are answered interactively and never pre-annotated. Serving, training, import, export and correction
statistics all read a project through this one object, so a config with several controls is served, trained and
exported alike.

Conventions of the official ML backends: ``<Label value="car" predicted_values="automobile,truck"/>`` lets the
model look for other phrases and still answer "car"; ``model_score_threshold="0.5"`` on the control tag sets the
box threshold for that control. groundloop's own: ``slice_size="640"`` on the control tag turns on sliced inference
(tiles of 640 px, for small objects in large images; ``DetectionSettings.slice_size``) for the project.

Video: ``<Video name="video" value="$video" frameRate="25"/>`` with ``<VideoRectangle name="box" toName="video"/>``
and a ``<Labels>`` on the same video is a video project: each ``<VideoRectangle>`` is a control of kind
``VIDEO_BOXES`` whose labels are those of the ``<Labels>`` on its video, and the schema's ``framerate`` is Label
Studio's frame rate for it (``frameRate``, default 24: Label Studio never reads the file's own rate, so frame
numbers are counted at this rate; ``active_learning.video.frames.FrameClock``). Its tracks are predicted by
``active_learning.video.tracking``.

Labels language cannot name: labels that share a ``predicted_values`` phrase (``<Label value="Alice"
predicted_values="human face"/>`` and ``<Label value="Bob" predicted_values="human face"/>``) form a
``LabelGroup``. The detector looks for the shared phrase once, as one class named after it (the labels' own names
are not searched: "Alice" means nothing to it), and trains on all the group's boxes as that class; the crop
classifier (``model.classifier``) then tells the group's labels apart on each box.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Iterable
from xml.sax.saxutils import quoteattr

from label_studio_sdk.label_interface import LabelInterface

from model.config import MIN_SLICE_SIZE
from model.prompts import ClassSpec


MAX_CONFIG_CHARS = 512_000
MAX_PHRASES = 300
"""Labels plus aliases a config may ask the detector for: each 256-token prompt is one more forward pass per
image, so a config of thousands of labels would hold the detector for minutes per task."""
MAX_ALIASES = 20
"""``predicted_values`` of one label."""


class LabelConfigError(ValueError):
    """The label config cannot be used; the message says why in one line."""


BOXES = "rectanglelabels"
BRUSH = "brushlabels"
POLYGON = "polygonlabels"
KEYPOINTS = "keypointlabels"
VIDEO_BOXES = "videorectangle"
MASK_KINDS = (BRUSH, POLYGON)
DEFAULT_FRAMERATE = 24.0
"""Label Studio's frame rate for a ``<Video>`` without ``frameRate``, whatever the file's own."""
"""Label Studio's region types (``type`` of a result item, the control tag lowercased) groundloop answers."""


@dataclass(frozen=True)
class LabelsControl:
    name: str
    """The control's ``name``: Label Studio's ``from_name`` of the regions we return."""
    classes: tuple[ClassSpec, ...]
    score_threshold: float | None = None
    """``model_score_threshold`` on the control tag, if set."""
    kind: str = BOXES
    """``BOXES``, ``BRUSH``, ``POLYGON`` or ``VIDEO_BOXES``: the type of the regions it gets."""
    slice_size: int | None = None
    """``slice_size`` on the control tag, if set: sliced inference with tiles of this many pixels (0: off)."""

    @property
    def draws_masks(self) -> bool:
        return self.kind in MASK_KINDS


@dataclass(frozen=True)
class SmartTool:
    """A ``smart`` control whose regions are prompts for the segmenter (a click, a box), answered with a mask."""

    name: str
    kind: str
    """``KEYPOINTS`` or ``BOXES``."""


@dataclass(frozen=True)
class PromptControl:
    name: str


@dataclass(frozen=True)
class Category:
    """One (control, label) pair: a COCO / VOC category of an export."""

    control: str
    label: str
    name: str
    """The label alone, or ``control/label`` when two controls share the label."""


@dataclass(frozen=True)
class LabelGroup:
    """Labels sharing a detection phrase through ``predicted_values``: detected once as ``phrase``, told apart by the
    crop classifier."""

    phrase: str
    """The first shared phrase: the name of the class the detector looks for and trains the group's boxes as."""
    labels: tuple[str, ...]
    """In config order."""
    aliases: tuple[str, ...] = ()
    """The members' other ``predicted_values``, searched for the group too."""


@dataclass(frozen=True)
class ProjectSchema:
    image_name: str
    """The ``<Image>`` (or ``<Video>``) tag every labels control draws on: Label Studio's ``to_name``."""
    image_key: str
    """Key in ``task["data"]`` holding the image (or video) URL (``$image`` -> ``image``)."""
    controls: tuple[LabelsControl, ...]
    prompt_control: PromptControl | None = None
    smart_tools: tuple[SmartTool, ...] = ()
    framerate: float | None = None
    """A video project's frame rate as Label Studio counts frames (``<Video frameRate>``); None for images."""

    @property
    def is_video(self) -> bool:
        return self.framerate is not None

    def control(self, name: str | None = None) -> LabelsControl:
        """The control called ``name``; the first one when ``name`` is None."""
        if name is None:
            return self.controls[0]
        for control in self.controls:
            if control.name == name:
                return control
        known = ", ".join(c.name for c in self.controls)
        raise LabelConfigError(f'the label config has no labels control name="{name}" (it has: {known})')

    @property
    def mask_controls(self) -> list[LabelsControl]:
        return [c for c in self.controls if c.draws_masks]

    @property
    def labels(self) -> list[ClassSpec]:
        """Every control's labels, a label shared by two controls once (its aliases merged)."""
        merged: dict[str, tuple[str, ...]] = {}
        for control in self.controls:
            for spec in control.classes:
                aliases = merged.get(spec.name, ())
                merged[spec.name] = aliases + tuple(a for a in spec.aliases if a not in aliases)
        return [ClassSpec(name, aliases) for name, aliases in merged.items()]

    @cached_property
    def label_groups(self) -> tuple[LabelGroup, ...]:
        """The labels sharing a ``predicted_values`` phrase, grouped (two labels sharing any phrase, directly or
        through a third, are one group); in config order."""
        return _label_groups(self.labels)

    @property
    def classes(self) -> list[ClassSpec]:
        """What the detector looks for and trains on: each label with a phrase of its own, and each group once, as a
        class named after its shared phrase (at its first label's place)."""
        classes, grouped = [], {label: group for group in self.label_groups for label in group.labels}
        for spec in self.labels:
            group = grouped.get(spec.name)
            if group is None:
                classes.append(spec)
            elif spec.name == group.labels[0]:
                classes.append(ClassSpec(group.phrase, group.aliases))
        return classes

    def detection_class(self, label: str) -> str:
        """The class a box of ``label`` is detected and trained as: its group's phrase, else the label itself."""
        return next((group.phrase for group in self.label_groups if label in group.labels), label)

    def group(self, detected: str) -> LabelGroup | None:
        """The group whose phrase the detector's class ``detected`` is, if any."""
        return next((group for group in self.label_groups if group.phrase == detected), None)

    def controls_with(self, label: str) -> list[LabelsControl]:
        """The controls that offer ``label``."""
        return [c for c in self.controls if any(spec.name == label for spec in c.classes)]

    def controls_for(self, label: str) -> list[LabelsControl]:
        """The controls a detection of ``label`` becomes a region of: those offering it, else the first (a phrase
        typed in an interactive prompt that no control offers)."""
        return self.controls_with(label) or [self.control()]

    def label_boxes(self, boxes: list[dict]) -> list[dict]:
        """The stored boxes that are labels: those of smart tools are prompts the annotator gave the segmenter."""
        prompts = {tool.name for tool in self.smart_tools}
        return [box for box in boxes if box.get("from_name") not in prompts]

    @property
    def categories(self) -> list[Category]:
        """One per (control, label), in config order."""
        pairs = [(c.name, spec.name) for c in self.controls for spec in c.classes]
        shared = {label for _, label in pairs if sum(1 for _, other in pairs if other == label) > 1}
        return [Category(control, label, f"{control}/{label}" if label in shared else label)
                for control, label in pairs]


def parse_label_config(xml: str) -> ProjectSchema | None:
    """Parse ``xml``: None when it has no labels control groundloop pre-annotates, LabelConfigError when broken."""
    if not isinstance(xml, str) or not xml.strip():
        raise LabelConfigError("label config is empty")
    if len(xml) > MAX_CONFIG_CHARS:
        raise LabelConfigError(f"label config is {len(xml)} characters, more than the {MAX_CONFIG_CHARS} accepted")
    try:
        interface = LabelInterface(xml)
    except Exception as exc:  # the SDK raises lxml, pydantic and its own errors alike
        raise LabelConfigError(f"label config cannot be parsed: {_one_line(exc)}") from None

    videos = {tag.name: tag for tag in interface.objects or [] if tag.tag.lower() == "video"}
    if any(control.tag.lower() == VIDEO_BOXES for control in interface.controls or []):
        if any(control.tag.lower() in (BOXES, *MASK_KINDS) for control in interface.controls or []):
            raise LabelConfigError("the label config draws on an image and on a video: groundloop pre-annotates one "
                                   "image or one video per task")
        return _video_schema(interface, videos)
    images = {tag.name: tag for tag in interface.objects or [] if tag.tag.lower() == "image"}
    drawing, prompt = [], None
    for control in interface.controls or []:
        kind = control.tag.lower()
        if kind in (BOXES, *MASK_KINDS) or (kind == KEYPOINTS and _smart(control)):
            drawing.append((control, _image_tag(images, control, required=True)))
        elif kind == "textarea" and prompt is None and _image_tag(images, control, required=False):
            prompt = control
    has_masks = any(control.tag.lower() in MASK_KINDS for control, _ in drawing)
    controls, tools, image = [], [], None
    for control, on in drawing:
        kind = control.tag.lower()
        if kind == KEYPOINTS or (kind == BOXES and has_masks and _smart(control)):
            tools.append(SmartTool(control.name, kind))
            continue
        if image is not None and on.name != image.name:
            raise LabelConfigError(
                f'<{control.tag} name="{control.name}"> draws on <Image name="{on.name}">, but "{controls[0].name}" '
                f'on <Image name="{image.name}">: groundloop pre-annotates one image per task')
        image = on
        controls.append(_labels_control(control, kind))
    if image is None:
        return None
    if not image.value_is_variable:
        raise LabelConfigError(f'<Image name="{image.name}"> needs value="$<task field>", not {image.value!r}')
    _check_phrases(controls)
    on_image = prompt is not None and image.name in (prompt.to_name or [])
    schema = ProjectSchema(image_name=image.name, image_key=image.value_name, controls=tuple(controls),
                           prompt_control=PromptControl(prompt.name) if on_image else None, smart_tools=tuple(tools))
    schema.label_groups  # a phrase shared by labels that is also a label's name raises here, not at the first job
    return schema


def _video_schema(interface: LabelInterface, videos: dict) -> ProjectSchema:
    """Each ``<VideoRectangle>`` with the labels of the ``<Labels>`` on its ``<Video>``; one video per task."""
    controls, video = [], None
    for control in interface.controls or []:
        if control.tag.lower() != VIDEO_BOXES:
            continue
        on = next((videos[name] for name in control.to_name or [] if name in videos), None)
        if on is None:
            raise LabelConfigError(f'<VideoRectangle name="{control.name}"> has toName={control.to_name} but no '
                                   "such <Video>")
        if video is not None and on.name != video.name:
            raise LabelConfigError(f'<VideoRectangle name="{control.name}"> draws on <Video name="{on.name}">, but '
                                   f'"{controls[0].name}" on <Video name="{video.name}">: groundloop pre-annotates '
                                   "one video per task")
        video = on
        labels = [c for c in interface.controls if c.tag.lower() == "labels" and on.name in (c.to_name or [])]
        if not labels:
            raise LabelConfigError(f'<VideoRectangle name="{control.name}"> needs a <Labels toName="{on.name}"> with '
                                   "the labels of its boxes")
        classes = [spec for tag in labels for spec in _labels_control(tag, VIDEO_BOXES).classes]
        controls.append(LabelsControl(name=control.name, classes=tuple(dict.fromkeys(classes)),
                                      score_threshold=_threshold(control), kind=VIDEO_BOXES))
    if not video.value_is_variable:
        raise LabelConfigError(f'<Video name="{video.name}"> needs value="$<task field>", not {video.value!r}')
    _check_phrases(controls)
    schema = ProjectSchema(image_name=video.name, image_key=video.value_name, controls=tuple(controls),
                           framerate=_framerate(video))
    if schema.label_groups:
        raise LabelConfigError("labels sharing a predicted_values phrase (custom labels) are for images; a video "
                               "project's labels each need a phrase of their own")
    return schema


def _framerate(video) -> float:
    attributes = {key.lower(): value for key, value in video.attr.items()}
    raw = attributes.get("framerate")
    if raw is None or str(raw).strip() == "":
        return DEFAULT_FRAMERATE
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0 < value <= 1000):
        raise LabelConfigError(f'frameRate="{raw}" on <Video name="{video.name}">: a number of frames per second '
                               "above 0, up to 1000")
    return value


def _check_phrases(controls: list[LabelsControl]) -> None:
    phrases = sum(1 + len(spec.aliases) for control in controls for spec in control.classes)
    if phrases > MAX_PHRASES:
        raise LabelConfigError(f"the label config asks for {phrases} labels and aliases, more than the {MAX_PHRASES} "
                               "groundloop detects per image")


def label_config_for(classes: Iterable[ClassSpec]) -> str:
    """The Label Studio labeling config for these classes: image ``$image``, rectangles ``label`` -> ``image``."""
    labels = []
    for spec in classes:
        aliases = f" predicted_values={quoteattr(','.join(spec.aliases))}" if spec.aliases else ""
        labels.append(f"    <Label value={quoteattr(spec.name)}{aliases}/>")
    return "\n".join(['<View>', '  <Image name="image" value="$image"/>',
                      '  <RectangleLabels name="label" toName="image">', *labels, '  </RectangleLabels>', '</View>'])


def parse_classes(text: str) -> list[ClassSpec]:
    """``"car(automobile|truck),person"`` -> classes; the words in parentheses, separated by ``|``, are aliases
    (extra phrases the model looks for, as ``predicted_values`` in a label config)."""
    classes = []
    for item in text.split(","):
        name, _, rest = item.strip().partition("(")
        name = name.strip()
        if not name or (rest and not rest.endswith(")")) or ")" in name or "|" in name:
            raise ValueError(f"class {item.strip()!r}: write NAME or NAME(alias|alias), classes separated by "
                             "commas, e.g. 'car(automobile|truck),person'")
        aliases = tuple(a.strip() for a in rest[:-1].split("|") if a.strip()) if rest else ()
        classes.append(ClassSpec(name, aliases))
    if len({c.name for c in classes}) != len(classes):
        raise ValueError(f"classes {text!r}: a class is named twice")
    return classes


def _label_groups(labels: list[ClassSpec]) -> tuple[LabelGroup, ...]:
    sharing: dict[str, list[str]] = {}  # phrase (lowercased) -> labels having it among their predicted_values
    for spec in labels:
        for alias in spec.aliases:
            sharing.setdefault(alias.lower(), []).append(spec.name)
    group_of = {spec.name: spec.name for spec in labels}  # union-find over labels joined by a shared phrase

    def root(label: str) -> str:
        while group_of[label] != label:
            label = group_of[label]
        return label

    for members in sharing.values():
        for other in members[1:]:
            group_of[root(other)] = root(members[0])
    members_of: dict[str, list[ClassSpec]] = {}
    for spec in labels:
        members_of.setdefault(root(spec.name), []).append(spec)
    groups = []
    names = {spec.name.lower(): spec.name for spec in labels}
    for members in (m for m in members_of.values() if len(m) > 1):
        phrases = [a for spec in members for a in spec.aliases]
        phrase = next(a for a in phrases if len(sharing[a.lower()]) > 1)
        clash = names.get(phrase.lower())
        if clash is not None:
            raise LabelConfigError(f'"{phrase}" is shared by the labels {", ".join(m.name for m in members)} through '
                                   f'predicted_values and is also the label "{clash}": rename one of them')
        aliases = tuple(dict.fromkeys(a for a in phrases if a.lower() != phrase.lower()))
        groups.append(LabelGroup(phrase, tuple(spec.name for spec in members), aliases))
    return tuple(groups)


def _labels_control(control, kind: str) -> LabelsControl:
    classes = []
    for label in (control.labels_attrs or {}).values():
        name = label.attr.get("value") or label.value
        aliases = tuple(a.strip() for a in label.attr.get("predicted_values", "").split(",") if a.strip())
        if len(aliases) > MAX_ALIASES:
            raise LabelConfigError(f'<Label value="{name[:60]}"> has {len(aliases)} predicted_values, more than '
                                   f"{MAX_ALIASES}")
        classes.append(ClassSpec(name=name, aliases=aliases))
    if not classes:
        raise LabelConfigError(f'<{control.tag} name="{control.name}"> has no <Label value="...">')
    return LabelsControl(name=control.name, classes=tuple(classes), score_threshold=_threshold(control), kind=kind,
                         slice_size=_slice_size(control))


def _smart(control) -> bool:
    """``smart="true"`` or ``smartOnly="true"``: the control is a tool that asks the model (Label Studio's term)."""
    return any(str(control.attr.get(key, "")).lower() == "true" for key in ("smart", "smartOnly", "smartonly"))


def _image_tag(images: dict, control, *, required: bool):
    """The ``<Image>`` the control draws on; None (or LabelConfigError when required) if it has none."""
    for name in control.to_name or []:
        if name in images:
            return images[name]
    if required:
        raise LabelConfigError(
            f'<{control.tag} name="{control.name}"> has toName={control.to_name} but no such <Image>'
        )
    return None


def _threshold(control) -> float | None:
    raw = control.attr.get("model_score_threshold")
    if raw is None or str(raw).strip() == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        raise LabelConfigError(f'model_score_threshold="{raw}" on "{control.name}" is not a number') from None
    if not 0.0 <= value <= 1.0:
        raise LabelConfigError(f'model_score_threshold="{raw}" on "{control.name}" is outside 0..1')
    return value


def _slice_size(control) -> int | None:
    raw = control.attr.get("slice_size")
    if raw is None or str(raw).strip() == "":
        return None
    try:
        value = int(str(raw).strip())
    except ValueError:
        raise LabelConfigError(f'slice_size="{raw}" on "{control.name}" is not a whole number of pixels') from None
    if value < 0 or 0 < value < MIN_SLICE_SIZE:
        raise LabelConfigError(f'slice_size="{raw}" on "{control.name}": 0 (off) or at least {MIN_SLICE_SIZE} pixels')
    return value


def _one_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
