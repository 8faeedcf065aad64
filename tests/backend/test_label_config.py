"""parse_label_config: what a labeling config asks of the detector."""

import pytest

from active_learning.labelstudio.config import LabelConfigError, parse_label_config
from model import ClassSpec

GROUNDING_DINO_EXAMPLE = """
<View>
  <Image name="image" value="$image"/>
  <Style>.prompt { margin: 4px }</Style>
  <View className="prompt">
    <TextArea name="prompt" toName="image" editable="true" rows="2" maxSubmissions="2" showSubmitButton="true"/>
  </View>
  <RectangleLabels name="label" toName="image">
    <Label value="cats" background="yellow"/>
    <Label value="house" background="blue"/>
  </RectangleLabels>
</View>
"""


def test_classes_aliases_and_threshold():
    schema = parse_label_config(
        '<View><Image name="img" value="$photo"/>'
        '<RectangleLabels name="boxes" toName="img" model_score_threshold="0.4">'
        '<Label value="car" predicted_values="automobile, truck"/><Label value="person"/>'
        "</RectangleLabels></View>"
    )
    (control,) = schema.controls
    assert (control.name, schema.image_name, schema.image_key) == ("boxes", "img", "photo")
    assert control.classes == (ClassSpec("car", ("automobile", "truck")), ClassSpec("person"))
    assert control.score_threshold == 0.4
    assert schema.prompt_control is None


def test_captured_config_has_no_threshold(ls_request):
    (control,) = parse_label_config(ls_request("setup")["schema"]).controls
    assert [c.name for c in control.classes] == ["cat", "dog"]
    assert control.score_threshold is None


def test_label_studio_grounding_dino_example_has_a_prompt():
    schema = parse_label_config(GROUNDING_DINO_EXAMPLE)
    assert (schema.prompt_control.name, schema.image_name) == ("prompt", "image")
    assert [c.name for c in schema.controls[0].classes] == ["cats", "house"]


def test_config_without_rectangles_is_empty_not_an_error():
    schema = parse_label_config(
        '<View><Image name="image" value="$image"/>'
        '<Choices name="c" toName="image"><Choice value="indoor"/></Choices></View>'
    )
    assert schema is None


TWO_CONTROLS = """
<View>
  <Image name="image" value="$image"/>
  <RectangleLabels name="objects" toName="image" model_score_threshold="0.3">
    <Label value="car" predicted_values="automobile"/><Label value="person"/>
  </RectangleLabels>
  <RectangleLabels name="damage" toName="image">
    <Label value="dent"/><Label value="car" predicted_values="wreck"/>
  </RectangleLabels>
</View>
"""


def test_every_rectangle_control_is_in_the_schema():
    schema = parse_label_config(TWO_CONTROLS)
    assert [c.name for c in schema.controls] == ["objects", "damage"]
    assert schema.control("damage").classes == (ClassSpec("dent"), ClassSpec("car", ("wreck",)))
    assert schema.control().name == "objects"
    # one detection class per label, a shared label once with the aliases of both controls
    assert schema.classes == [ClassSpec("car", ("automobile", "wreck")), ClassSpec("person"), ClassSpec("dent")]
    assert [c.name for c in schema.controls_with("car")] == ["objects", "damage"]
    # export categories: the label alone, unless two controls share it
    assert [(c.control, c.label, c.name) for c in schema.categories] == [
        ("objects", "car", "objects/car"), ("objects", "person", "person"), ("damage", "dent", "dent"),
        ("damage", "car", "damage/car")]
    with pytest.raises(LabelConfigError, match="no labels control name=\"nope\""):
        schema.control("nope")


def test_rectangles_on_two_images_are_refused_with_the_reason():
    with pytest.raises(LabelConfigError, match="one image per task"):
        parse_label_config('<View><Image name="a" value="$a"/><Image name="b" value="$b"/>'
                           '<RectangleLabels name="x" toName="a"><Label value="p"/></RectangleLabels>'
                           '<RectangleLabels name="y" toName="b"><Label value="q"/></RectangleLabels></View>')


@pytest.mark.parametrize(
    "xml, message",
    [
        ("", "empty"),
        ("<View><Image name='image' value='$image'", "cannot be parsed"),
        ("not xml", "cannot be parsed"),
        ('<View><RectangleLabels name="l" toName="image"><Label value="a"/></RectangleLabels></View>', "no such"),
        ('<View><Image name="image" value="$image"/><RectangleLabels name="l" toName="image"/></View>', "no <Label"),
        ('<View><Image name="image" value="https://x/a.png"/>'
         '<RectangleLabels name="l" toName="image"><Label value="a"/></RectangleLabels></View>', "needs value"),
        ('<View><Image name="image" value="$image"/><RectangleLabels name="l" toName="image" '
         'model_score_threshold="high"><Label value="a"/></RectangleLabels></View>', "not a number"),
        ('<View><Image name="image" value="$image"/><RectangleLabels name="l" toName="image" '
         'model_score_threshold="7"><Label value="a"/></RectangleLabels></View>', "outside 0..1"),
    ],
)
def test_broken_configs_say_why(xml, message):
    with pytest.raises(LabelConfigError, match=message):
        parse_label_config(xml)
