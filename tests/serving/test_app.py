"""The application over HTTP on a live Serve app (tiny preset, API key set): images, the OpenAI client, hostile
requests, the queue, and the web page in a headless browser. A trained checkpoint: ``test_trained_checkpoint.py``.
"""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
import requests

from .conftest import decode_png, flood, start_serve, tiny_settings, write_adapter

API_KEY = "test-key-7f3a"
KEY_ENV = "SERVING_TEST_API_KEY"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
MAX_IN_FLIGHT = 3
DEPLOYMENT: dict = {}  # what the module's app was deployed with, for the test that updates it in place


@pytest.fixture(scope="module")
def server(ray_session, tmp_path_factory):
    from ray import serve

    # Two LoRA adapters beside the base, asked for as "qwen-image-tiny:a" and "qwen-image-tiny:b".
    folder = tmp_path_factory.mktemp("adapters")
    adapters = [
        {"name": "a", "path": write_adapter(folder / "a", 1, ["to_q", "to_v", "img_mlp.net.2"])},
        {"name": "b", "path": write_adapter(folder / "b", 2, ["img_mlp.net.0.proj", "to_out.0"]), "scale": 0.8},
    ]
    settings = tiny_settings(
        model={"adapters": adapters},
        api_key_env=KEY_ENV,
        queue={"max_in_flight": MAX_IN_FLIGHT, "retry_after_s": 3},
    )
    c = {"name": "c", "path": write_adapter(folder / "c", 3, ["to_v", "img_mlp.net.2"])}
    DEPLOYMENT["adapters"] = adapters + [c]
    # The key reaches the ingress replicas as an environment variable, as it would from a secret on a cluster.
    options = {"Ingress": {"ray_actor_options": {"num_cpus": 0.5, "runtime_env": {"env_vars": {KEY_ENV: API_KEY}}}}}
    # Under a route prefix, as behind a shared gateway: the page must find the API there too.
    url = start_serve(settings, options, name="api-test", route_prefix="/qwen")
    yield url
    serve.shutdown()


def generate(url: str, body: dict, headers: dict | None = None) -> requests.Response:
    return requests.post(f"{url}/v1/images/generations", json=body, headers=headers or AUTH, timeout=120)


def test_generation_endpoint(server):
    body = {"prompt": "a red fox in the snow", "size": "64x48", "num_inference_steps": 2, "seed": 3}
    first = generate(server, body)
    assert first.status_code == 200, first.text
    assert first.headers["X-Generator-Retries"] == "0"  # answered by the first replica asked
    answer = first.json()
    assert isinstance(answer["created"], int) and len(answer["data"]) == 1 and answer["data"][0]["seed"] == 3
    image = decode_png(answer["data"][0]["b64_json"])
    assert image.shape == (48, 64, 3) and image.std() > 1  # height 48, width 64: "WxH"
    again = decode_png(generate(server, body).json()["data"][0]["b64_json"])
    np.testing.assert_array_equal(again, image)
    other = decode_png(generate(server, {**body, "seed": 4}).json()["data"][0]["b64_json"])
    assert np.abs(other.astype(int) - image.astype(int)).max() > 10
    # n images get seeds seed, seed + 1, ...: the first of two is the single image, batched or not.
    pair = generate(server, {**body, "n": 2}).json()["data"]
    assert [item["seed"] for item in pair] == [3, 4]
    assert np.abs(decode_png(pair[0]["b64_json"]).astype(int) - image.astype(int)).max() <= 1
    assert np.abs(decode_png(pair[1]["b64_json"]).astype(int) - other.astype(int)).max() <= 1


def test_openai_client(server):
    openai = pytest.importorskip("openai", reason="the official client is in the test extras: pip install openai")
    client = openai.OpenAI(base_url=f"{server}/v1", api_key=API_KEY, max_retries=0)
    assert [model.id for model in client.models.list()] == ["qwen-image-tiny", "qwen-image-tiny:a", "qwen-image-tiny:b"]
    result = client.images.generate(
        model="qwen-image-tiny",
        prompt="a lighthouse at dusk",
        size="64x64",
        response_format="b64_json",
        extra_body={"seed": 0, "num_inference_steps": 2},
    )
    assert decode_png(result.data[0].b64_json).shape == (64, 64, 3)
    with pytest.raises(openai.BadRequestError, match="multiples of 16"):
        client.images.generate(model="qwen-image-tiny", prompt="x", size="100x100", response_format="b64_json")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server}/v1", api_key="wrong", max_retries=0).models.list()


def test_serve_adapter_by_model_name(server):
    """The base and two adapters from one replica: the model field picks one, the same seed gives each its own
    image, each the same whether asked alone or together with the others (batched per adapter), and an adapter
    that is not served is a 404 naming ``model``."""
    openai = pytest.importorskip("openai", reason="the official client is in the test extras: pip install openai")
    client = openai.OpenAI(base_url=f"{server}/v1", api_key=API_KEY, max_retries=0)
    models = ["qwen-image-tiny", "qwen-image-tiny:a", "qwen-image-tiny:b"]

    def draw(model: str) -> np.ndarray:
        result = client.images.generate(
            model=model,
            prompt="a lighthouse at dusk",
            size="64x64",
            response_format="b64_json",
            extra_body={"seed": 11, "num_inference_steps": 2},
        )
        return decode_png(result.data[0].b64_json).astype(int)

    alone = {model: draw(model) for model in models}
    for first, second in [(0, 1), (0, 2), (1, 2)]:
        assert np.abs(alone[models[first]] - alone[models[second]]).max() > 10, (models[first], models[second])
    together: dict[str, np.ndarray] = {}
    # One request per model at once: as many as the module's queue admits (MAX_IN_FLIGHT), so none gets a 503.
    threads = [threading.Thread(target=lambda m=m: together.update({m: draw(m)})) for m in models]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(np.abs(together[model] - alone[model]).max() <= 1 for model in models)

    with pytest.raises(openai.NotFoundError) as error:
        client.images.generate(model="qwen-image-tiny:c", prompt="x", size="64x64", response_format="b64_json")
    assert error.value.status_code == 404 and error.value.body["param"] == "model"
    assert "qwen-image-tiny:a" in error.value.body["message"]

    # The in-place update: the generator replica's reconfigure, which Serve calls with a deployment's new
    # user_config (serve deploy of an edited config file), unloads "b" and loads "c" in the running replica: the
    # same actor, the base not reloaded.
    import time

    from ray import serve
    from ray.util.state import list_actors

    def generator_actors() -> set[str]:
        alive = list_actors(filters=[("state", "=", "ALIVE")], limit=1000)
        return {actor.actor_id for actor in alive if "ImageGenerator" in actor.class_name}

    before = generator_actors()
    adapters = [DEPLOYMENT["adapters"][0], DEPLOYMENT["adapters"][2]]
    serve.get_deployment_handle("ImageGenerator", "api-test").reconfigure.remote({"adapters": adapters}).result()
    time.sleep(1.5)  # the ingress asks the generator for its adapters again after ADAPTER_LIST_TTL_S
    assert [model.id for model in client.models.list()] == ["qwen-image-tiny", "qwen-image-tiny:a", "qwen-image-tiny:c"]
    assert generator_actors() == before and len(before) == 1  # the same replica
    assert np.abs(draw("qwen-image-tiny:a") - alone["qwen-image-tiny:a"]).max() <= 1
    assert np.abs(draw("qwen-image-tiny") - alone["qwen-image-tiny"]).max() <= 1  # the base as it was
    assert np.abs(draw("qwen-image-tiny:c") - alone["qwen-image-tiny"]).max() > 10
    with pytest.raises(openai.NotFoundError):
        draw("qwen-image-tiny:b")


def _chunks(total: int):
    yield b'{"prompt": "'
    for _ in range(total // 4096):
        yield b"a" * 4096
    yield b'"}'


# (id, request keyword arguments, expected status, "param" the error must name (or None), fragment of its message)
HOSTILE = [
    ("bad-json", {"data": b'{"prompt": "a fox", '}, 400, None, "not valid JSON"),
    ("not-an-object", {"data": b'["a fox"]'}, 400, None, "JSON object"),
    ("nan", {"data": b'{"prompt": "a", "true_cfg_scale": NaN}'}, 400, None, "not valid JSON"),
    ("not-utf8", {"data": b'{"prompt": "\xff\xfe"}'}, 400, None, "not valid JSON"),
    ("size-not-16", {"json": {"prompt": "a", "size": "100x100"}}, 400, "size", "multiples of 16"),
    ("size-huge", {"json": {"prompt": "a", "size": "16384x16384"}}, 400, "size", "at most"),
    ("size-form", {"json": {"prompt": "a", "size": "big"}}, 400, "size", "WIDTHxHEIGHT"),
    ("size-zero", {"json": {"prompt": "a", "size": "0x64"}}, 400, "size", "multiples of 16"),
    ("steps-negative", {"json": {"prompt": "a", "num_inference_steps": -1}}, 400, "num_inference_steps", "between"),
    ("steps-huge", {"json": {"prompt": "a", "num_inference_steps": 10**9}}, 400, "num_inference_steps", "between"),
    ("n-1000", {"json": {"prompt": "a", "n": 1000}}, 400, "n", "between 1 and 4"),
    ("n-zero", {"json": {"prompt": "a", "n": 0}}, 400, "n", "between 1 and 4"),
    ("prompt-1mb", {"json": {"prompt": "a" * 1_000_000}}, 413, None, "larger than"),
    ("prompt-1mb-chunked", {"data": _chunks(1_000_000)}, 413, None, "larger than"),
    ("prompt-tokens", {"json": {"prompt": "fox " * 200}}, 400, "prompt", "tokens"),
    ("negative-tokens", {"json": {"prompt": "a", "negative_prompt": "blur " * 200}}, 400, "negative_prompt", "tokens"),
    ("prompt-empty", {"json": {"prompt": "   "}}, 400, "prompt", "empty"),
    ("prompt-missing", {"json": {"size": "64x64"}}, 400, "prompt", "required"),
    ("prompt-number", {"json": {"prompt": 42}}, 400, "prompt", "string"),
    ("prompt-null", {"json": {"prompt": None}}, 400, "prompt", "string"),
    ("n-string", {"json": {"prompt": "a", "n": "2"}}, 400, "n", "integer"),
    ("n-bool", {"json": {"prompt": "a", "n": True}}, 400, "n", "integer"),
    ("steps-float", {"json": {"prompt": "a", "num_inference_steps": 2.5}}, 400, "num_inference_steps", "integer"),
    ("cfg-string", {"json": {"prompt": "a", "true_cfg_scale": "high"}}, 400, "true_cfg_scale", "number"),
    ("cfg-huge", {"json": {"prompt": "a", "true_cfg_scale": 1e308}}, 400, "true_cfg_scale", "between"),
    ("seed-negative", {"json": {"prompt": "a", "seed": -5}}, 400, "seed", "between"),
    ("seed-huge", {"json": {"prompt": "a", "seed": 2**70}}, 400, "seed", "between"),
    ("size-list", {"json": {"prompt": "a", "size": [64, 64]}}, 400, "size", "string"),
    ("unknown-field", {"json": {"prompt": "a", "style": "vivid"}}, 400, "style", "unknown field"),
    ("url-format", {"json": {"prompt": "a", "response_format": "url"}}, 400, "response_format", "b64_json"),
    ("unknown-model", {"json": {"prompt": "a", "model": "dall-e-3"}}, 404, "model", "does not exist"),
    ("key-missing", {"json": {"prompt": "a"}, "headers": {}}, 401, None, "API key"),
    ("key-wrong", {"json": {"prompt": "a"}, "headers": {"Authorization": "Bearer nope"}}, 401, None, "API key"),
    ("key-not-bearer", {"json": {"prompt": "a"}, "headers": {"Authorization": API_KEY}}, 401, None, "API key"),
    ("models-key-missing", {"method": "GET", "path": "/v1/models", "headers": {}}, 401, None, "API key"),
    ("wrong-method", {"method": "GET"}, 405, None, "Method Not Allowed"),
    ("unknown-route", {"method": "POST", "path": "/v1/images/variations", "json": {}}, 404, None, "Not Found"),
]


@pytest.mark.parametrize(
    ("kwargs", "status", "param", "fragment"), [h[1:] for h in HOSTILE], ids=[h[0] for h in HOSTILE]
)
def test_rejects_bad_requests(server, kwargs, status, param, fragment):
    kwargs = dict(kwargs)
    method = kwargs.pop("method", "POST")
    path = kwargs.pop("path", "/v1/images/generations")
    headers = kwargs.pop("headers", AUTH)
    response = requests.request(method, f"{server}{path}", headers=headers, timeout=60, **kwargs)
    assert response.status_code == status, response.text[:300]
    error = response.json()["error"]
    assert fragment in error["message"] and error["param"] == param, error
    assert error["type"] in ("invalid_request_error", "authentication_error")


def test_health_and_page_need_no_key(server):
    assert requests.get(f"{server}/healthz", timeout=30).json() == {"status": "ok"}
    page = requests.get(f"{server}/", timeout=30)
    assert page.status_code == 200 and "<textarea" in page.text and "/v1/images/generations" in page.text


def test_queue_full_gets_503_not_a_hang(server):
    """More concurrent requests than the ingress admits: the extra ones get 503 + Retry-After at once."""
    body = {"prompt": "a busy day", "size": "128x128", "num_inference_steps": 12, "seed": 1}
    num_requests = 4 * MAX_IN_FLIGHT
    responses, _ = flood(lambda: generate(server, body), num_requests)
    statuses = sorted(response.status_code for response in responses)
    assert len(statuses) == num_requests and set(statuses) == {200, 503}, statuses
    assert statuses.count(200) >= MAX_IN_FLIGHT
    busy = next(response for response in responses if response.status_code == 503)
    assert busy.headers["Retry-After"] == "3" and "busy" in busy.json()["error"]["message"]
    assert all(json.loads(r.text)["data"][0]["seed"] == 1 for r in responses if r.status_code == 200)


def test_web_page(server, browser):
    """Type a prompt, size, steps, seed and the key into the page, submit, and see the image."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(f"{server}/")
    browser.find_element(By.ID, "prompt").send_keys("a red fox in the snow")
    for field, value in (("width", "64"), ("height", "48"), ("steps", "2"), ("seed", "5"), ("key", API_KEY)):
        element = browser.find_element(By.ID, field)
        element.clear()
        element.send_keys(value)
    browser.find_element(By.ID, "generate").click()
    image = browser.find_element(By.ID, "result")
    WebDriverWait(browser, 90).until(lambda _: browser.execute_script("return arguments[0].naturalWidth", image) > 0)
    size = browser.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", image)
    assert size == [64, 48]
    assert image.get_attribute("src").startswith("data:image/png;base64,")
    assert browser.find_element(By.ID, "status").text == "seed 5"

    # A request the server refuses (the page's own checks pass it) shows the server's message, naming the field.
    width = browser.find_element(By.ID, "width")
    width.clear()
    width.send_keys("4096")
    browser.find_element(By.ID, "generate").click()
    status = browser.find_element(By.ID, "status")
    WebDriverWait(browser, 30).until(lambda _: status.text.startswith("size:"))
    assert "pixels" in status.text and status.get_attribute("class") == "error"


def test_rate_limited_client_gets_429(server):
    """A flood of valid generations with the key, past the key's burst (``rate_limit.images``: by default 30 at
    once, then one a second): the extra ones get 429 at once, in the OpenAI shape, with a Retry-After after which the
    key is served again. Last in the module, as it spends the key's bucket; other clients, addresses and the
    arena's flood are in test_limits.py and test_arena.py."""
    from serving.config import ServeSettings

    rate = ServeSettings().rate_limit.images
    body = {"prompt": "a flood", "size": "64x64", "num_inference_steps": 2, "seed": 2}
    num_requests = rate.burst + 10
    responses, elapsed = flood(lambda: generate(server, body), num_requests)
    statuses = [response.status_code for response in responses]
    assert len(statuses) == num_requests and set(statuses) <= {200, 429, 503}, statuses
    # At most a bucket's worth, plus what refilled while the flood lasted, got past the rate.
    admitted = statuses.count(200) + statuses.count(503)
    assert statuses.count(200) >= 1 and admitted <= rate.burst + elapsed * rate.requests / rate.period_s + 1, statuses
    limited = next(response for response in responses if response.status_code == 429)
    assert limited.headers["Retry-After"] == "1"  # one request a second: the next is at most a second away
    error = limited.json()["error"]
    assert error["code"] == "rate_limit_exceeded" and error["type"] == "invalid_request_error"
    assert "rate limit" in error["message"] and error["param"] is None
    time.sleep(int(limited.headers["Retry-After"]))
    assert generate(server, body).status_code == 200
