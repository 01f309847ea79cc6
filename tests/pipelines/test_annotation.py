"""Structured annotation: parsing and rule checks of the captioner's answer, the transformers captioner actor (a
batch answers what each image answers alone), and the vLLM backend through Ray Data LLM with only the engine
stubbed (vLLM cannot run here)."""

from __future__ import annotations

import json
import sys

import cv2
import numpy as np
import pyarrow as pa
import pydantic
import pytest

from pipelines import annotation
from pipelines.annotation import PROMPT, Captioner, CaptionerConfig, annotation_columns, parse_annotation
from store import columns as C
from store.columns import (
    ANN_ABNORMAL,
    ANN_CAPTION,
    ANN_ERROR,
    ANN_IMAGE_TYPE,
    ANN_RAW,
    ANN_WATERMARKS,
    ANNOTATION_COLUMNS,
)

TINY = {"preset": "tiny", "max_new_tokens": 12, "max_pixels": 112 * 112}


@pytest.fixture(scope="module")
def captioner():
    """One tiny captioner (random weights, greedy) for the module: building it costs seconds. Its matrices are so
    small that one torch thread is fastest, and a second one spinning on a busy 2-core machine made a 0.3 s test
    take 20 s."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield Captioner(CaptionerConfig(**TINY))
    finally:
        torch.set_num_threads(threads)


def png(height: int, width: int, seed: int) -> bytes:
    """A noise image: different sizes give different numbers of image tokens, noise gives distinct answers."""
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return cv2.imencode(".png", pixels)[1].tobytes()


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


def test_captioner_actor_on_tiny_model_never_crashes(captioner):
    image = cv2.imencode(".png", np.full((96, 128, 3), 180, np.uint8))[1].tobytes()
    batch = {
        C.SAMPLE_ID: np.array(["a", "b"], dtype=object),
        C.IMAGE_BYTES: np.array([image, b"\x00\x01junk"], dtype=object),
        C.CAPTION: np.array(["grey", "junk"], dtype=object),
    }
    out = captioner(batch)
    # Random weights answer gibberish: recorded as a parse failure, the source caption kept, nothing raised.
    assert out[ANN_ERROR][0].startswith(("unparsable", "invalid"))
    assert out[ANN_ERROR][1].startswith("no_image:broken_file")
    assert list(out[C.CAPTION]) == ["grey", "junk"] and list(out[ANN_CAPTION]) == ["", ""]
    assert len(out["annotation_raw"][0]) > 0  # the raw answer is kept for inspection


def test_captioner_batch_equals_single(captioner):
    # Three sizes -> 4, 15 and 12 image tokens (sides resized to multiples of 28 within 112 x 112 pixels): the
    # prompts of one batch differ in length, so all but the longest are padded.
    images = [
        annotation.captioner_image(png(*size, seed), TINY["max_pixels"])[0]
        for seed, size in enumerate([(60, 60), (96, 128), (200, 150)])
    ]
    assert sorted(image.shape[0] * image.shape[1] // 28**2 for image in images) == [4, 12, 15]
    alone_ids = [captioner.generate_token_ids([image])[0] for image in images]
    alone = [captioner.generate([image])[0] for image in images]
    assert len(set(alone)) == 3  # distinct answers: a row that took another's would show
    assert captioner.generate(images) == alone
    assert captioner.generate_token_ids(images) == alone_ids
    assert captioner.generate(images[::-1]) == alone[::-1]
    assert captioner.tokenizer.padding_side == "right"  # the shared tokenizer is left as it was


def test_captioner_image_is_what_the_processor_would_feed(captioner):
    """Both backends get images the Qwen2.5-VL processor does not resize again: same pixels in both towers."""
    import torch

    image, failure = annotation.captioner_image(png(200, 150, 0), TINY["max_pixels"])
    assert failure is None and image.shape == (112, 84, 3) and image.dtype == np.uint8
    features = captioner.processor.image_processor(images=[image], return_tensors="pt")
    assert features["image_grid_thw"].tolist() == [[1, 112 // 14, 84 // 14]]
    unresized = captioner.processor.image_processor(images=[image], do_resize=False, return_tensors="pt")
    assert torch.equal(features["pixel_values"], unresized["pixel_values"])  # the processor's resize is a no-op
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    for height in range(1, 1200, 37):
        for width in [5, 28, 57, 250, 448, 1000, 3000]:
            for max_pixels in [56 * 56, 112 * 112, 448 * 448]:
                if max(height, width) > 200 * min(height, width):
                    continue  # refused by both
                expected = smart_resize(height, width, min_pixels=56 * 56, max_pixels=max_pixels)
                assert annotation.smart_resize(height, width, max_pixels) == expected, (height, width, max_pixels)
    assert annotation.captioner_image(b"junk", TINY["max_pixels"]) == (None, "no_image:broken_file:unidentified")
    assert annotation.captioner_image(png(2, 500, 0), TINY["max_pixels"])[1] == "no_image:aspect_ratio_over_200"
    tokens = len(captioner.tokenizer(PROMPT)["input_ids"])
    assert tokens <= annotation.PROMPT_TEXT_TOKENS  # the bound the vLLM context check relies on


def test_vllm_config_refuses_what_cannot_run(tmp_path):
    folder = str(tmp_path / "Qwen2.5-VL-7B-Instruct")
    assert CaptionerConfig(backend="vllm", weights_dir=folder).model_source == folder
    assert CaptionerConfig(backend="vllm", vllm={"model_source": "s3://bucket/qwen"}).active
    assert not CaptionerConfig(backend="vllm", enabled=False).active  # off: nothing to check
    refused = {
        "cannot run preset tiny": {"preset": "tiny"},
        "text_encoder/ has no tokenizer": {"preset": "qwen-image", "weights_dir": folder},
        "needs a model": {},
        "cannot hold a request": {"weights_dir": folder, "max_new_tokens": 4000},
        "engine_kwargs.max_model_len is not yours to set: set annotation.vllm.max_model_len": {
            "weights_dir": folder,
            "vllm": {"engine_kwargs": {"max_model_len": 100}},
        },
        "min > max": {"weights_dir": folder, "vllm": {"concurrency": [3, 2]}},
    }
    for message, fields in refused.items():
        with pytest.raises(pydantic.ValidationError, match=message):
            CaptionerConfig(backend="vllm", **fields)


class StubEngine:
    """Stands in for the vLLM engine (``vLLMEngineWrapper``): answers a valid annotation naming the image size and
    pixel sum it received and the sampling parameters, and fails for images 140 pixels wide."""

    max_pending_requests = 8

    def __init__(self):
        self.engine = self

    async def generate_async(self, row):
        from ray.llm._internal.batch.stages.vllm_engine_stage import vLLMEngineRequest, vLLMOutputData

        image = row["multimodal_data"]["image"]
        if image.size[0] == 140:
            raise RuntimeError("stub engine failure")
        seen = {"size": list(image.size), "sum": int(np.asarray(image).sum()), "prompt": row["prompt"]}
        answer = json.dumps({**GOOD, "image_style": json.dumps(seen), "sp": row["sampling_params"]})
        request = vLLMEngineRequest(
            request_id=0, idx_in_batch=row["__idx_in_batch"], prompt=row["prompt"], params=row["sampling_params"]
        )
        output = vLLMOutputData(prompt=row["prompt"], num_input_tokens=1, generated_text=answer)
        return request, output.model_dump(), 0.0

    async def do_log_stats(self):
        pass

    def shutdown(self):
        pass


def stub_engine_udf():
    """Ray Data LLM's engine UDF (batching, per-row error records: all real) around ``StubEngine``."""
    from ray.llm._internal.batch.stages.base import StatefulStageUDF
    from ray.llm._internal.batch.stages.vllm_engine_stage import vLLMEngineStageUDF

    class StubEngineUDF(vLLMEngineStageUDF):
        def __init__(self, data_column, expected_input_keys, should_continue_on_error, **engine_settings):
            StatefulStageUDF.__init__(self, data_column, expected_input_keys)
            self.should_continue_on_error = should_continue_on_error
            self.engine_kwargs = {"disable_log_stats": True}
            self.llm = StubEngine()

    return StubEngineUDF


def test_vllm_backend_config(ray_session, tmp_path):
    config = CaptionerConfig(
        backend="vllm",
        weights_dir=str(tmp_path / "Qwen2.5-VL-7B-Instruct"),  # read by the engine only
        max_new_tokens=12,
        max_pixels=112 * 112,
        vllm={"batch_size": 4, "engine_kwargs": {"enforce_eager": True}},
    )
    # The processor config: the same model and bounds, one image a prompt, per-row errors, no CPU model stages.
    processor_config = annotation.vllm_processor_config(config)
    assert processor_config.model_source == config.weights_dir
    assert processor_config.engine_kwargs["limit_mm_per_prompt"] == {"image": 1}
    assert processor_config.engine_kwargs["mm_processor_kwargs"] == {"min_pixels": 56 * 56, "max_pixels": 112 * 112}
    assert processor_config.engine_kwargs["max_model_len"] == 4096
    assert processor_config.engine_kwargs["enforce_eager"] is True
    assert (processor_config.batch_size, processor_config.concurrency) == (4, 1)
    assert processor_config.should_continue_on_error
    processor = annotation.build_vllm_processor(config)
    assert processor.list_stage_names() == [annotation.ENGINE_STAGE]
    engine = processor.get_stage_by_name(annotation.ENGINE_STAGE)
    assert engine.map_batches_kwargs["num_gpus"] == 1  # one GPU per replica (tensor_parallel_size 1)
    if not annotation.vllm_importable():  # the engine actor says what is missing, before anything else
        with pytest.raises(ImportError, match="needs the `vllm` package on the GPU nodes"):
            engine.fn(
                data_column="__data",
                expected_input_keys=[],
                batch_size=4,
                max_concurrent_batches=8,
                model=config.weights_dir,
                engine_kwargs={},
            )

    # The request the preprocess builds: the transformers backend's prompt and pixels, greedy sampling.
    good, wide = png(200, 150, 1), png(96, 128, 2)  # wide: resized to 140 x 84, which the stub engine fails
    rows = pa.table(
        {
            C.SAMPLE_ID: ["good", "junk", "wide", "good2"],
            C.IMAGE_BYTES: [good, b"\x00\x01junk", wide, png(96, 96, 3)],
            C.CAPTION: ["a", "b", "c", "d"],
            "embedding": pa.array([np.full(3, i, np.float32) for i in range(4)], pa.list_(pa.float32(), 3)),
            "flag": [True, False, True, False],
        }
    )
    packed = annotation.pack_rows(rows)
    assert annotation.unpack_rows(packed.column(annotation.ROW_KEY).to_pylist()).equals(rows)
    request = annotation.VllmRequest(config)({annotation.ROW_KEY: packed.column(annotation.ROW_KEY)[0].as_py()})
    assert request["prompt"] == PROMPT
    assert request["sampling_params"] == {"temperature": 0.0, "max_tokens": 12, "repetition_penalty": 1.05}
    expected = annotation.captioner_image(good, config.max_pixels)[0]
    assert np.array_equal(np.asarray(request["multimodal_data"]["image"]), expected)
    junk = annotation.VllmRequest(config)({annotation.ROW_KEY: packed.column(annotation.ROW_KEY)[1].as_py()})
    assert junk == {annotation.ENGINE_ERROR_KEY: "no_image:broken_file:unidentified"}

    # End to end on Ray Data with the engine stubbed: every row once, its columns unchanged, the same parsing.
    import ray.cloudpickle
    import ray.data

    engine.fn = stub_engine_udf()
    engine.map_batches_kwargs["num_gpus"] = 0  # in place: assigning would re-run the stage's GPU set-up
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the stub travels to the engine actor
    try:
        refs = annotation.annotate_with_processor(ray.data.from_arrow(rows), processor).to_arrow_refs()
        out = pa.concat_tables(ray.get(refs)).sort_by(C.SAMPLE_ID)
    finally:
        ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    assert out.column_names == [*rows.column_names, *ANNOTATION_COLUMNS]
    assert out.select(rows.column_names).equals(rows.sort_by(C.SAMPLE_ID))  # values and types
    by_id = {row[C.SAMPLE_ID]: row for row in out.to_pylist()}
    assert by_id["junk"][ANN_ERROR] == "no_image:broken_file:unidentified"
    assert by_id["wide"][ANN_ERROR] == "captioner_error:RuntimeError" and by_id["wide"][ANN_RAW] == ""
    for sample_id, data in [("good", good), ("good2", png(96, 96, 3))]:
        row = by_id[sample_id]
        image = annotation.captioner_image(data, config.max_pixels)[0]
        assert row[ANN_ERROR] == "" and row[ANN_IMAGE_TYPE] == "photo" and row[ANN_CAPTION] == GOOD["caption"]
        seen = json.loads(row["ann_image_style"])
        assert seen == {"size": [image.shape[1], image.shape[0]], "sum": int(image.sum()), "prompt": PROMPT}
        assert json.loads(row[ANN_RAW])["sp"] == {"temperature": 0.0, "max_tokens": 12, "repetition_penalty": 1.05}
        columns = annotation_columns([row[ANN_RAW]], [None])  # the transformers backend's parsing
        assert {name: values[0] for name, values in columns.items()} == {name: row[name] for name in columns}
