"""Structured annotation: parsing and rule checks of the captioner's answer, and the captioner actor itself."""

from __future__ import annotations

import json

import cv2
import numpy as np

from pipelines import schema
from pipelines.annotation import (
    ANN_ABNORMAL,
    ANN_CAPTION,
    ANN_ERROR,
    ANN_IMAGE_TYPE,
    ANN_WATERMARKS,
    Captioner,
    CaptionerConfig,
    annotation_columns,
    parse_annotation,
)

GOOD = {
    "caption": 'A red shop sign that reads "OPEN" above a wooden door.',
    "image_type": "Photo",
    "image_style": "realistic, daylight",
    "watermark_list": [],
    "abnormal_element": "no",
}


def test_parses_a_good_answer_even_in_a_code_fence():
    annotation, reason = parse_annotation("```json\n" + json.dumps(GOOD) + "\n```")
    assert reason == ""
    assert annotation.image_type == "photo" and annotation.abnormal_element is False
    assert annotation.caption.startswith("A red shop sign")


def test_rules_coerce_and_cross_check_fields():
    answer = dict(GOOD, watermark_list="shutterstock", abnormal_element="no")
    annotation, reason = parse_annotation("Sure! " + json.dumps(answer))
    assert reason == "" and annotation.watermark_list == ["shutterstock"]
    assert annotation.abnormal_element is True  # a watermark is an abnormal element whatever the model said


def test_failures_are_recorded_with_reasons():
    cases = {
        "I cannot help with that.": "unparsable",
        '{"caption": "x"': "unparsable",
        json.dumps(dict(GOOD, image_type="selfie")): "invalid:image_type",
        json.dumps(dict(GOOD, abnormal_element="maybe")): "invalid:abnormal_element",
        json.dumps({k: v for k, v in GOOD.items() if k != "caption"}): "invalid:caption:missing",
        json.dumps(dict(GOOD, caption=" ")): "invalid:caption",
    }
    for answer, expected in cases.items():
        annotation, reason = parse_annotation(answer)
        assert annotation is None and reason.startswith(expected), (answer, reason)

    columns = annotation_columns([json.dumps(GOOD), "garbage", ""], [None, None, "no_image:broken_file:empty"])
    assert list(columns[ANN_ERROR]) == ["", "unparsable:no JSON object in the answer", "no_image:broken_file:empty"]
    assert list(columns[ANN_IMAGE_TYPE]) == ["photo", "", ""]
    assert columns[ANN_ABNORMAL].dtype == bool and json.loads(columns[ANN_WATERMARKS][0]) == []


def test_captioner_actor_on_tiny_model_never_crashes():
    captioner = Captioner(CaptionerConfig(preset="tiny", max_new_tokens=12, max_pixels=112 * 112))
    image = cv2.imencode(".png", np.full((96, 128, 3), 180, np.uint8))[1].tobytes()
    batch = {
        schema.SAMPLE_ID: np.array(["a", "b"], dtype=object),
        schema.IMAGE_BYTES: np.array([image, b"\x00\x01junk"], dtype=object),
        schema.CAPTION: np.array(["grey", "junk"], dtype=object),
    }
    out = captioner(batch)
    # Random weights answer gibberish: recorded as a parse failure, the source caption kept, nothing raised.
    assert out[ANN_ERROR][0].startswith(("unparsable", "invalid"))
    assert out[ANN_ERROR][1].startswith("no_image:broken_file")
    assert list(out[schema.CAPTION]) == ["grey", "junk"] and list(out[ANN_CAPTION]) == ["", ""]
    assert len(out["annotation_raw"][0]) > 0  # the raw answer is kept for inspection
