"""Reading labeling configs: which tools point at which image, with which labels."""

import pytest

from samkit.label_studio.errors import LabelConfigError
from samkit.label_studio.label_config import parse_label_config

from ls_helpers import CONFIG_ALL


def test_captured_config_has_all_four_tools(payloads):
    config = parse_label_config(payloads["ls_to_backend_setup"]["body"]["schema"])
    assert config.images == {"image": "image"}
    tags = {c.name: c.tag for c in config.controls}
    assert tags == {"brush": "BrushLabels", "kp": "KeyPointLabels", "rect": "RectangleLabels", "poly": "PolygonLabels"}
    assert [c.name for c in config.outputs("image")] == ["brush", "poly"]
    assert {c.name for c in config.prompts("image")} == {"kp", "rect"}
    assert config.control("kp").smart and config.control("kp").labels == ("Object",)
    assert config.control("brush").result_type == "brushlabels"


def test_image_variable_and_tool_targets():
    xml = """<View><Image name="photo" value="$img_url"/><Image name="other" value="$b"/>
      <PolygonLabels name="p" toName="other"><Label value="A"/></PolygonLabels>
      <KeyPoint name="k" toName="other" smart="true"/>
      <Choices name="c" toName="photo"><Choice value="x"/></Choices></View>"""
    config = parse_label_config(xml)
    assert config.images == {"photo": "img_url", "other": "b"}
    assert config.default_image == "other"
    assert [c.tag for c in config.controls] == ["PolygonLabels", "KeyPointLabels"]
    assert config.outputs("photo") == []


def test_pick_label_prefers_the_clicked_one():
    config = parse_label_config(CONFIG_ALL)
    brush = config.control("brush")
    assert brush.pick_label("Dog") == "Dog"
    assert brush.pick_label("Cat") == "Object"  # not in this tool: its first label
    assert brush.pick_label(None) == "Object"


@pytest.mark.parametrize("xml, words", [
    ("<View><Image name='i' value='$image'/><Choices name='c' toName='i'><Choice value='a'/></Choices></View>",
     ["BrushLabels", "PolygonLabels"]),
    ("<View><Image name='i' value='$image'/><KeyPointLabels name='k' toName='i'><Label value='a'/></KeyPointLabels>"
     "</View>", ["found only KeyPointLabels"]),
    ("<View><Text name='t' value='$text'/></View>", ["no <Image>"]),
    ("<View><Image name='i' value='$image'/><BrushLabels name='b'/></View>", ["toName"]),
    ("<View><Image", ["not valid XML"]),
    ("", ["no labeling config"]),
])
def test_unsupported_configs_say_what_to_add(xml, words):
    with pytest.raises(LabelConfigError) as err:
        parse_label_config(xml)
    for w in words:
        assert w in str(err.value)
