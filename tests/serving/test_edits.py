"""``POST /v1/images/edits`` on a live Serve app (tiny preset at 64x64, two steps, API key set): the OpenAI client,
reproducibility, the source's effect, batching by source size, several images and a mask, and hostile uploads."""

from __future__ import annotations

import io
import os
import pathlib
import shutil
import threading

import numpy as np
import pytest
import requests
from PIL import Image

from serving.generator import generate_jobs
from serving.schema import EditJob, GenerationJob

from ..fixtures import structured_picture
from .conftest import decode_png, start_serve, tiny_settings

# The README's picture of the Edit tab; the test writes it to its own folder, and here with UPDATE_DOCS_IMAGES=1.
DOCS_EDIT_TAB = pathlib.Path(__file__).resolve().parents[2] / "docs" / "images" / "serving_edit_tab.png"

API_KEY = "edit-key-51c9"
KEY_ENV = "SERVING_EDIT_TEST_API_KEY"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
MAX_UPLOAD_BYTES = 100_000
MODEL = "qwen-image-tiny"


def source_png(width: int = 64, height: int = 64, seed: int = 0, fmt: str = "PNG") -> bytes:
    """A structured picture (gradients and a block of one colour), encoded as ``fmt``."""
    buffer = io.BytesIO()
    Image.fromarray(structured_picture(width, height, seed)).save(buffer, format=fmt)
    return buffer.getvalue()


def mask_png(width: int = 64, height: int = 64, *, alpha: bool = True) -> bytes:
    """A mask whose top half marks the region to change: transparent (OpenAI's convention), or white without alpha."""
    if alpha:
        pixels = np.full((height, width, 4), 255, np.uint8)
        pixels[: height // 2, :, 3] = 0
    else:
        pixels = np.zeros((height, width), np.uint8)
        pixels[: height // 2] = 255
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def noise_png(width: int, height: int) -> bytes:
    """Random pixels: a PNG that does not compress (about 3 bytes a pixel)."""
    buffer = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def server(ray_session):
    from ray import serve

    settings = tiny_settings(
        api_key_env=KEY_ENV,
        edit={"max_upload_bytes": MAX_UPLOAD_BYTES, "max_source_pixels": 512 * 512},
        # Long enough that the concurrent requests below can meet in one batch.
        batching={"max_batch_images": 8, "wait_timeout_s": 0.2},
    )
    options = {"Ingress": {"ray_actor_options": {"num_cpus": 0.5, "runtime_env": {"env_vars": {KEY_ENV: API_KEY}}}}}
    url = start_serve(settings, options, name="edit-test")
    yield url
    serve.shutdown()


def edit(
    url: str,
    image: bytes | list[bytes] | None,
    fields: dict,
    headers: dict = AUTH,
    mask: bytes | None = None,
) -> requests.Response:
    """A multipart request, as the OpenAI client sends one: text fields as parts without a file name; a list of
    images as ``image[]`` parts."""
    parts = [(key, (None, str(value))) for key, value in fields.items()]
    if isinstance(image, list):
        parts += [("image[]", (f"source{i}.png", data, "image/png")) for i, data in enumerate(image)]
    elif image is not None:
        parts.append(("image", ("source.png", image, "image/png")))
    if mask is not None:
        parts.append(("mask", ("mask.png", mask, "image/png")))
    return requests.post(f"{url}/v1/images/edits", files=parts, headers=headers, timeout=120)


def edited(url: str, image: bytes | list[bytes], fields: dict, mask: bytes | None = None) -> list[np.ndarray]:
    response = edit(url, image, fields, mask=mask)
    assert response.status_code == 200, response.text[:300]
    return [decode_png(item["b64_json"]) for item in response.json()["data"]]


def test_edits_endpoint(server):
    """The official client's ``images.edit``: an image of the requested size; a non-image upload is a 400."""
    openai = pytest.importorskip("openai", reason="the official client is in the test extras: pip install openai")
    client = openai.OpenAI(base_url=f"{server}/v1", api_key=API_KEY, max_retries=0)
    result = client.images.edit(
        model=MODEL,
        image=("source.png", source_png(), "image/png"),
        prompt="make the block blue",
        size="64x64",
        n=1,
        response_format="b64_json",
        extra_body={"seed": 3, "num_inference_steps": 2},
    )
    image = decode_png(result.data[0].b64_json)
    assert image.shape == (64, 64, 3) and image.std() > 1
    with pytest.raises(openai.BadRequestError, match="not a PNG, JPEG or WebP") as refused:
        client.images.edit(model=MODEL, image=("notes.txt", b"not an image", "text/plain"), prompt="x", size="64x64")
    assert refused.value.status_code == 400 and refused.value.body["param"] == "image"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server}/v1", api_key="wrong", max_retries=0).images.edit(
            model=MODEL, image=("source.png", source_png(), "image/png"), prompt="x"
        )


def test_edits_endpoint_with_mask_and_several_images(server):
    """The official client's ``images.edit`` with two images and a mask (Edit-Plus references, the first image
    inpainted where the mask is transparent): images of the requested size. A mask of the wrong size is a 400 naming
    ``mask``; more images than ``edit.max_images`` (3) a 400 naming ``image``."""
    openai = pytest.importorskip("openai", reason="the official client is in the test extras: pip install openai")
    client = openai.OpenAI(base_url=f"{server}/v1", api_key=API_KEY, max_retries=0)
    images = [("first.png", source_png(seed=0), "image/png"), ("second.png", source_png(96, 64, seed=1), "image/png")]
    options = dict(model=MODEL, prompt="put the block of picture 2 on picture 1", response_format="b64_json")
    steps = {"seed": 3, "num_inference_steps": 2}
    for size, n in (("64x64", 2), ("96x64", 1)):
        result = client.images.edit(
            image=images, mask=("mask.png", mask_png(), "image/png"), size=size, n=n, extra_body=steps, **options
        )
        width, height = (int(side) for side in size.split("x"))
        assert len(result.data) == n
        for item in result.data:
            assert decode_png(item.b64_json).shape == (height, width, 3)
    with pytest.raises(openai.BadRequestError, match="must be the") as refused:
        client.images.edit(image=images, mask=("mask.png", mask_png(32, 32), "image/png"), size="64x64", **options)
    assert refused.value.status_code == 400 and refused.value.body["param"] == "mask"
    with pytest.raises(openai.BadRequestError, match="at most 3 images") as refused:
        client.images.edit(image=images * 2, size="64x64", **options)
    assert refused.value.status_code == 400 and refused.value.body["param"] == "image"


def test_masked_and_multi_image_edits(server):
    """One image and a mask: instruction-guided inpainting. A transparent mask and a white-means-change mask without
    alpha of the same region give the same image; ``strength`` changes the masked region, the kept one much less; a
    mask changes the result. Several images without a mask: an Edit-Plus edit whose second image counts."""
    fields = {"prompt": "make the top blue", "size": "64x64", "seed": 5, "num_inference_steps": 4}
    (first,) = edited(server, source_png(seed=0), fields, mask=mask_png())
    (again,) = edited(server, source_png(seed=0), fields, mask=mask_png(alpha=False))
    np.testing.assert_array_equal(again, first)
    (stronger,) = edited(server, source_png(seed=0), {**fields, "strength": 1.0}, mask=mask_png())
    assert not np.array_equal(stronger, first)
    plain = edited(server, source_png(seed=0), fields)[0]
    assert not np.array_equal(plain, first)
    (pair,) = edited(server, [source_png(seed=0), source_png(seed=1)], fields)
    (other_pair,) = edited(server, [source_png(seed=0), source_png(seed=2)], fields)
    assert not np.array_equal(pair, other_pair) and not np.array_equal(pair, plain)
    # The strength moves the masked top half (rows 0-31) far more than the kept rows far from the mask's edge (the
    # kept latents are the image's; the decoder's reach blurs the edge): about 6 against 2.3 levels on average.
    change = np.abs(stronger.astype(int) - first.astype(int))
    assert change[48:].mean() < 0.5 * change[:32].mean()


def test_web_page_edit_tab(server, browser, tmp_path):
    """The page's Edit tab: upload two images, paint a stroke on the first, submit, and see a masked edit of the
    requested size; "Clear mask" sends a plain (unmasked) Edit-Plus edit."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    paths = []
    for index, data in enumerate((source_png(seed=0), source_png(96, 64, seed=1))):
        paths.append(tmp_path / f"source{index}.png")
        paths[-1].write_bytes(data)
    browser.get(f"{server}/")
    browser.find_element(By.ID, "key").send_keys(API_KEY)
    browser.find_element(By.ID, "tab-edit").click()
    browser.find_element(By.ID, "edit-images").send_keys("\n".join(str(path) for path in paths))
    canvas = browser.find_element(By.ID, "mask-canvas")
    WebDriverWait(browser, 30).until(lambda _: canvas.get_attribute("width") == "64")
    ActionChains(browser).move_to_element_with_offset(canvas, -40, -40).click_and_hold().move_by_offset(
        80, 0
    ).release().perform()
    assert browser.find_element(By.ID, "mask-info").text.startswith("mask painted")
    # The mask the page will send: the first image's size, transparent along the stroke, opaque elsewhere.
    alpha = browser.execute_script(
        "const pixels = mask.getContext('2d').getImageData(0, 0, mask.width, mask.height).data;"
        "return [mask.width, mask.height, pixels.filter((v, i) => i % 4 === 3 && v === 0).length];"
    )
    assert alpha[:2] == [64, 64] and 0 < alpha[2] < 64 * 64
    browser.find_element(By.ID, "edit-prompt").send_keys("put the block of picture 2 on picture 1")
    for field, value in (("edit-width", "64"), ("edit-height", "64"), ("edit-steps", "2"), ("edit-seed", "5")):
        element = browser.find_element(By.ID, field)
        element.clear()
        element.send_keys(value)
    status = browser.find_element(By.ID, "edit-status")
    result = browser.find_element(By.ID, "edit-result")
    browser.find_element(By.ID, "edit").click()
    WebDriverWait(browser, 90).until(lambda _: "seed" in status.text or status.get_attribute("class") == "error")
    assert status.text == "masked edit, 2 image(s), seed 5"
    size = browser.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", result)
    assert size == [64, 64] and result.get_attribute("src").startswith("data:image/png;base64,")
    # The tab as a user sees it (the uploads, the painted stroke, the result): the README's picture of it.
    height = browser.execute_script("return document.documentElement.scrollHeight")
    metrics = {"width": 900, "height": height, "deviceScaleFactor": 1, "mobile": False}
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)  # the whole page in one shot
    screenshot = tmp_path / "edit_tab.png"
    assert browser.save_screenshot(str(screenshot))
    browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    assert Image.open(screenshot).size == (900, height)
    if os.environ.get("UPDATE_DOCS_IMAGES") == "1":
        DOCS_EDIT_TAB.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(screenshot, DOCS_EDIT_TAB)
    browser.find_element(By.ID, "clear-mask").click()
    browser.find_element(By.ID, "edit").click()
    WebDriverWait(browser, 90).until(lambda _: status.text.startswith("edit, "))
    assert status.text == "edit, 2 image(s), seed 5"


def test_edit_is_reproducible_and_follows_the_source(server):
    fields = {"prompt": "make the block blue", "size": "64x48", "seed": 3, "num_inference_steps": 2}
    (first,) = edited(server, source_png(seed=0), fields)
    assert first.shape == (48, 64, 3)
    (again,) = edited(server, source_png(seed=0), fields)
    np.testing.assert_array_equal(again, first)
    # The tiny preset's random weights let the source move the output by a few levels only; a server that dropped the
    # upload (or ran text-to-image) would give the same image for both sources.
    (other_source,) = edited(server, source_png(seed=1), fields)
    assert np.abs(other_source.astype(int) - first.astype(int)).max() >= 1
    generated = requests.post(f"{server}/v1/images/generations", json=fields, headers=AUTH, timeout=120)
    generated = generated.json()["data"][0]["b64_json"]
    assert not np.array_equal(decode_png(generated), first)
    (other_seed,) = edited(server, source_png(seed=0), {**fields, "seed": 4})
    assert np.abs(other_seed.astype(int) - first.astype(int)).max() > 10
    # n images get seeds seed, seed + 1, ...: the first of two is the single image, batched or not.
    pair = edited(server, source_png(seed=0), {**fields, "n": 2})
    assert np.abs(pair[0].astype(int) - first.astype(int)).max() <= 1
    assert np.abs(pair[1].astype(int) - other_seed.astype(int)).max() <= 1


def test_edit_size_defaults_to_the_source_aspect(server):
    """No ``size`` (or "auto"): the source's aspect ratio at the default size's area (64x64 here), sides of 16."""
    for size in ({}, {"size": "auto"}):
        (image,) = edited(server, source_png(96, 64), {"prompt": "brighter", "seed": 0, **size})
        assert image.shape == (48, 80, 3)  # 3:2 at 4096 pixels: 78.4 x 52.3, rounded to 80 x 48
    (portrait,) = edited(server, source_png(64, 128, fmt="JPEG"), {"prompt": "brighter", "seed": 0})
    assert portrait.shape == (96, 48, 3)


def test_concurrent_edits_of_different_sources(server):
    """Edits whose sources have different aspect ratios may arrive together; each gets what it would get alone."""
    cases = [(source_png(64, 64, seed=0), 3), (source_png(96, 64, seed=0), 3), (source_png(64, 64, seed=1), 5)]
    fields = {"prompt": "make the block blue", "size": "64x64"}
    alone = [edited(server, image, {**fields, "seed": seed})[0] for image, seed in cases]
    start = threading.Barrier(len(cases))
    together: list[np.ndarray | None] = [None] * len(cases)

    def one(index: int) -> None:
        image, seed = cases[index]
        start.wait()
        together[index] = edited(server, image, {**fields, "seed": seed})[0]

    threads = [threading.Thread(target=one, args=(index,)) for index in range(len(cases))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    for single, batched in zip(alone, together, strict=True):
        assert batched is not None and np.abs(batched.astype(int) - single.astype(int)).max() <= 1


class _RecordingModel:
    """Stands in for ``TextToImage``: records each sampler call and returns black images."""

    def __init__(self):
        self.calls: list[tuple] = []
        self.adapter = None

    def use_adapter(self, name):
        self.adapter = name

    def _images(self, prompts: list[str], height: int, width: int) -> np.ndarray:
        return np.zeros((len(prompts), height, width, 3), np.uint8)

    def __call__(self, prompts, *, height, width, **kwargs):
        self.calls.append(("t2i", len(prompts), set(), self.adapter))
        return self._images(prompts, height, width)

    def edit(self, prompts, images, *, height, width, **kwargs):
        self.calls.append(("edit", len(prompts), {image.shape for image in images}, self.adapter))
        return self._images(prompts, height, width)


def test_edit_kinds_never_share_a_batch():
    """Edit, Edit-Plus, masked edit and masked Edit-Plus keys differ; masked edits differ by strength; equal jobs
    of one kind share a key."""
    common = dict(prompt="p", negative_prompt=" ", width=64, height=64, num_steps=2, true_cfg_scale=4.0, seeds=(0,))
    source = dict(image=b"", source_width=64, source_height=64, source_area=None, vision_area=384 * 384)
    more = dict(references=(b"",), reference_sizes=((96, 64),))
    jobs = [
        EditJob(**common, **source),
        EditJob(**common, **source, **more),
        EditJob(**common, **source, mask=b""),
        EditJob(**common, **source, **more, mask=b""),
        EditJob(**common, **source, mask=b"", strength=0.9),
        EditJob(**common, **source, references=(b"",), reference_sizes=((64, 96),)),
    ]
    assert [job.kind for job in jobs[:4]] == ["edit", "edit_plus", "edit_inpaint", "edit_plus_inpaint"]
    assert len({job.batch_key() for job in jobs}) == len(jobs)
    assert EditJob(**common, **source, mask=b"x").batch_key() == jobs[2].batch_key()


def test_generate_jobs_groups_edits_by_source_size():
    """One sampler call per compatible group: text-to-image apart from edits, edits apart by source size, and
    each LoRA adapter (or the base) apart from the others."""
    common = dict(prompt="p", negative_prompt=" ", width=64, height=64, num_steps=2, true_cfg_scale=4.0)

    def edit_job(width: int, height: int, seeds: tuple[int, ...]) -> EditJob:
        image = source_png(width, height)
        return EditJob(
            **common,
            seeds=seeds,
            image=image,
            source_width=width,
            source_height=height,
            source_area=None,
            vision_area=384 * 384,
        )

    jobs = [
        GenerationJob(**common, seeds=(0,)),
        edit_job(64, 64, (0, 1)),
        edit_job(96, 64, (0,)),
        edit_job(64, 64, (2,)),
        GenerationJob(**common, seeds=(1,)),
        GenerationJob(**common, seeds=(2,), adapter="style"),
        edit_job(64, 64, (3,)).__class__(**{**vars(edit_job(64, 64, (3,))), "adapter": "style"}),
    ]
    model = _RecordingModel()
    results = generate_jobs(model, jobs)
    assert [len(pngs) for pngs in results] == [1, 2, 1, 1, 1, 1, 1]
    expected = [("t2i", 2, set(), None), ("edit", 3, {(64, 64, 3)}, None), ("edit", 1, {(64, 96, 3)}, None)]
    expected += [("t2i", 1, set(), "style"), ("edit", 1, {(64, 64, 3)}, "style")]
    assert sorted(model.calls, key=str) == sorted(expected, key=str)


# (id, image bytes or None, form fields, headers (None: the key), expected status, "param" or None, message fragment)
GOOD = {"prompt": "make it blue", "size": "64x64", "num_inference_steps": 2}
HOSTILE = [
    ("prompt-missing", source_png(), {"size": "64x64"}, None, 400, "prompt", "required"),
    ("prompt-empty", source_png(), {**GOOD, "prompt": "  "}, None, 400, "prompt", "empty"),
    ("image-missing", None, GOOD, None, 400, "image", "required"),
    ("image-as-text", None, {**GOOD, "image": "source.png"}, None, 400, "image", "file part"),
    ("text-upload", b"just some text, no pixels", GOOD, None, 400, "image", "not a PNG, JPEG or WebP"),
    ("gif-upload", None, GOOD, None, 400, "image", "not a PNG, JPEG or WebP"),
    ("png-truncated", noise_png(64, 64)[:5000], GOOD, None, 400, "image", "truncated"),
    ("png-empty", b"", GOOD, None, 400, "image", "empty"),
    ("too-many-pixels", None, GOOD, None, 400, "image", "at most 262144 pixels"),
    ("too-small", source_png(16, 64), GOOD, None, 400, "image", "too small"),
    ("too-thin", source_png(32, 320), GOOD, None, 400, "image", "8 times"),
    ("upload-too-large", noise_png(200, 200), GOOD, None, 413, None, "larger than 100000"),
    ("size-not-16", source_png(), {**GOOD, "size": "100x100"}, None, 400, "size", "multiples of 16"),
    ("size-huge", source_png(), {**GOOD, "size": "1024x1024"}, None, 400, "size", "at most"),
    ("n-text", source_png(), {**GOOD, "n": "two"}, None, 400, "n", "integer"),
    ("n-1000", source_png(), {**GOOD, "n": 1000}, None, 400, "n", "between 1 and 4"),
    ("cfg-nan", source_png(), {**GOOD, "true_cfg_scale": "nan"}, None, 400, "true_cfg_scale", "between"),
    ("url-format", source_png(), {**GOOD, "response_format": "url"}, None, 400, "response_format", "b64_json"),
    ("unknown-field", source_png(), {**GOOD, "quality": "hd"}, None, 400, "quality", "unknown field"),
    ("too-many-images", [source_png()] * 4, GOOD, None, 400, "image", "at most 3 images"),
    ("second-not-image", [source_png(), b"text"], GOOD, None, 400, "image", "not a PNG, JPEG or WebP"),
    ("mask-not-png", source_png(), GOOD, None, 400, "mask", "not a PNG"),
    ("mask-wrong-size", source_png(), GOOD, None, 400, "mask", "48x64; it must be the (first) image's size, 64x64"),
    ("mask-twice", source_png(), GOOD, None, 400, "mask", "one mask per request"),
    ("mask-as-text", source_png(), {**GOOD, "mask": "mask.png"}, None, 400, "mask", "file part"),
    ("mask-size-not-32", source_png(), {**GOOD, "size": "48x64"}, None, 400, "size", "multiples of 32"),
    ("strength-no-mask", source_png(), {**GOOD, "strength": 0.5}, None, 400, "strength", "masked edits only"),
    ("strength-zero", source_png(), {**GOOD, "strength": 0}, None, 400, "strength", "(0, 1]"),
    ("strength-nan", source_png(), {**GOOD, "strength": "nan"}, None, 400, "strength", "(0, 1]"),
    ("unknown-model", source_png(), {**GOOD, "model": "dall-e-2"}, None, 404, "model", "does not exist"),
    ("key-missing", source_png(), GOOD, {}, 401, None, "API key"),
    ("key-wrong", source_png(), GOOD, {"Authorization": "Bearer nope"}, 401, None, "API key"),
]


def _gif() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64)).save(buffer, format="GIF")
    return buffer.getvalue()


def _bomb() -> bytes:
    """A PNG of 1024 x 1024 pixels in about 1 KB: its header alone must get it refused."""
    buffer = io.BytesIO()
    Image.new("L", (1024, 1024)).save(buffer, format="PNG")
    return buffer.getvalue()


_BUILT = {"gif-upload": _gif, "too-many-pixels": _bomb}
# The mask each masked case sends ("mask-twice" adds a second one as a raw part).
_MASKS = {
    "mask-not-png": b"GIF89a not a png",
    "mask-wrong-size": mask_png(48, 64),
    "mask-twice": mask_png(),
    "mask-size-not-32": mask_png(),
    "strength-zero": mask_png(),
    "strength-nan": mask_png(),
}


@pytest.mark.parametrize(
    ("case", "image", "fields", "headers", "status", "param", "fragment"), HOSTILE, ids=[h[0] for h in HOSTILE]
)
def test_rejects_bad_edits(server, case, image, fields, headers, status, param, fragment):
    if case in _BUILT:
        image = _BUILT[case]()
    if case == "mask-twice":
        fields = {**fields}
        parts = [(key, (None, str(value))) for key, value in fields.items()]
        parts += [("image", ("a.png", image, "image/png"))] + [("mask", ("m.png", mask_png(), "image/png"))] * 2
        response = requests.post(f"{server}/v1/images/edits", files=parts, headers=AUTH, timeout=120)
    else:
        response = edit(server, image, fields, AUTH if headers is None else headers, mask=_MASKS.get(case))
    assert response.status_code == status, response.text[:300]
    error = response.json()["error"]
    assert fragment in error["message"] and error["param"] == param, error
    assert error["type"] in ("invalid_request_error", "authentication_error")


def _raw_edit(url: str, body, content_type: str) -> requests.Response:
    return requests.post(
        f"{url}/v1/images/edits", data=body, headers={**AUTH, "Content-Type": content_type}, timeout=60
    )


def test_rejects_bodies_that_are_not_small_multipart_forms(server):
    as_json = _raw_edit(server, b'{"prompt": "x"}', "application/json")
    assert as_json.status_code == 400 and "multipart/form-data" in as_json.json()["error"]["message"]
    broken = _raw_edit(server, b"--nope\r\ngarbage", "multipart/form-data")
    assert broken.status_code == 400 and "multipart" in broken.json()["error"]["message"]

    # Chunked (no Content-Length): refused once the bytes read pass the limit.
    boundary = "b0undary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="big.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()

    def chunks():
        yield head
        for _ in range(2 * MAX_UPLOAD_BYTES // 8192):
            yield b"\0" * 8192

    chunked = _raw_edit(server, chunks(), f"multipart/form-data; boundary={boundary}")
    assert chunked.status_code == 413 and "larger than" in chunked.json()["error"]["message"]
