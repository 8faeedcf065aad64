"""What a Label Studio labeling config asks of a box detector.

Parsing goes through label-studio-sdk's ``LabelInterface`` (the same parser Label Studio uses); this module only
picks out what groundloop needs: every ``<RectangleLabels>`` tied to an ``<Image>`` with its classes, and an
optional ``<TextArea>`` on that image whose text is an interactive detection prompt (as in Label Studio's own
Grounding DINO example).

Conventions of the official ML backends: ``<Label value="car" predicted_values="automobile,truck"/>`` lets the
model look for other phrases and still answer "car"; ``model_score_threshold="0.5"`` on the control tag sets the
box threshold for that control.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from label_studio_sdk.label_interface import LabelInterface

from model import ClassSpec


class LabelConfigError(ValueError):
    """The label config cannot be used; the message says why in one line."""


@dataclass(frozen=True)
class RectangleControl:
    name: str
    """The control's ``name``: Label Studio's ``from_name`` of the regions we return."""
    to_name: str
    """The ``<Image>`` tag it draws on."""
    image_value_key: str
    """Key in ``task["data"]`` holding the image URL (``$image`` -> ``image``)."""
    classes: list[ClassSpec]
    score_threshold: float | None = None
    """``model_score_threshold`` on the control tag, if set."""


@dataclass(frozen=True)
class PromptControl:
    name: str
    to_name: str


@dataclass(frozen=True)
class LabelSchema:
    rectangle_controls: list[RectangleControl] = field(default_factory=list)
    prompt_control: PromptControl | None = None


def parse_label_config(xml: str) -> LabelSchema:
    """Parse ``xml``; a config without RectangleLabels gives an empty schema, a broken one LabelConfigError."""
    if not isinstance(xml, str) or not xml.strip():
        raise LabelConfigError("label config is empty")
    try:
        interface = LabelInterface(xml)
    except Exception as exc:  # the SDK raises lxml, pydantic and its own errors alike
        raise LabelConfigError(f"label config cannot be parsed: {_one_line(exc)}") from None

    rectangles: list[RectangleControl] = []
    prompt: PromptControl | None = None
    for control in interface.controls or []:
        kind = control.tag.lower()
        if kind == "rectanglelabels":
            rectangles.append(_rectangle_control(interface, control))
        elif kind == "textarea" and prompt is None:
            image = _image_tag(interface, control, required=False)
            if image is not None:
                prompt = PromptControl(name=control.name, to_name=image.name)
    return LabelSchema(rectangle_controls=rectangles, prompt_control=prompt)


def _rectangle_control(interface: LabelInterface, control) -> RectangleControl:
    image = _image_tag(interface, control, required=True)
    if not image.value_is_variable:
        raise LabelConfigError(f'<Image name="{image.name}"> needs value="$<task field>", not {image.value!r}')
    classes = []
    for label in (control.labels_attrs or {}).values():
        name = label.attr.get("value") or label.value
        aliases = tuple(a.strip() for a in label.attr.get("predicted_values", "").split(",") if a.strip())
        classes.append(ClassSpec(name=name, aliases=aliases))
    if not classes:
        raise LabelConfigError(f'<RectangleLabels name="{control.name}"> has no <Label value="...">')
    return RectangleControl(
        name=control.name,
        to_name=image.name,
        image_value_key=image.value_name,
        classes=classes,
        score_threshold=_threshold(control),
    )


def _image_tag(interface: LabelInterface, control, *, required: bool):
    """The ``<Image>`` the control draws on; None (or LabelConfigError when required) if it has none."""
    images = {tag.name: tag for tag in interface.objects or [] if tag.tag.lower() == "image"}
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


def _one_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
