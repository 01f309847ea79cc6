"""Serving test helpers: one Serve instance per test module on a free local port, tiny settings, PNG decoding, and
headless Chromium (Debian's ``chromium`` + ``chromium-driver``, driven by Selenium) for the web page.

Each module starts Serve (``serve.start`` on a free port, then ``serve.run``) in a module-scoped fixture and shuts
Serve down at its end; the session's Ray (``ray_session``) stays up. When Chromium is missing the ``browser``
fixture installs it with apt-get (as root, as ``make system-deps`` does) and skips, saying why, only where it cannot.
"""

from __future__ import annotations

import base64
import io
import os
import shutil
import socket
import subprocess

import numpy as np
import pytest
from PIL import Image

from serving.config import ServeSettings


def flood(send, count: int) -> tuple[list, float]:
    """``count`` calls of ``send()`` released at once from their own threads (a barrier): the responses in the order
    they came back, and the seconds the flood lasted."""
    import threading
    import time

    start = threading.Barrier(count)
    responses: list = []

    def one() -> None:
        start.wait()
        responses.append(send())

    threads = [threading.Thread(target=one) for _ in range(count)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return responses, time.monotonic() - started


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tiny_settings(**sections) -> ServeSettings:
    """Settings for fast CPU tests: small default size, two steps, a small pixel budget; ``sections`` override."""
    base = {
        "model": {"preset": "tiny", "name": "qwen-image-tiny", "device": "cpu"},
        "limits": {"max_pixels": 128 * 128, "max_steps": 30, "max_n": 4, "max_prompt_tokens": 64},
        "defaults": {"size": "64x64", "num_inference_steps": 2},
        "batching": {"max_batch_images": 8, "wait_timeout_s": 0.02},
    }
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return ServeSettings.model_validate(base)


def write_adapter(folder, seed: int, targets: list[str]) -> str:
    """A LoRA adapter for the tiny preset's transformer (seed 0) with random non-zero weights, written as our
    trainers export one (``pytorch_lora_weights.safetensors``, diffusers' format); returns the folder."""
    import torch

    from models.lora import LoraSettings, adapter_metadata, adapter_state, add_lora, save_adapter
    from models.presets import build_components

    transformer = build_components("tiny", parts=("transformer",)).transformer
    add_lora(transformer, LoraSettings(rank=4, alpha=4, target_modules=targets))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in transformer.parameters():
            if param.requires_grad:
                param.copy_(0.3 * torch.randn(param.shape, generator=generator))
    save_adapter(folder, adapter_state(transformer), adapter_metadata(transformer))
    return str(folder)


def start_serve(
    settings: ServeSettings, deployment_options: dict | None = None, *, name: str, route_prefix: str = "/"
) -> str:
    """Start Serve on a free port and run the application under ``route_prefix``; returns its base URL."""
    from ray import serve

    from serving.app import application, local_url

    http_options = {"host": "127.0.0.1", "port": free_port()}
    serve.start(http_options=http_options)
    serve.run(application(settings, deployment_options), name=name, route_prefix=route_prefix)
    return local_url(http_options, route_prefix)


def decode_png(b64: str) -> np.ndarray:
    """A ``b64_json`` image -> uint8 ``[H, W, 3]``; fails unless it is a PNG."""
    data = base64.b64decode(b64)
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG" and image.mode == "RGB"
    return np.asarray(image)


def chromium_binaries() -> tuple[str, str]:
    """Paths of chromium and chromedriver, installed with apt-get when missing; skips the test if it cannot."""

    def found() -> tuple[str | None, str | None]:
        return shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")

    browser, driver = found()
    if browser and driver:
        return browser, driver
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("chromium/chromedriver missing and not root with apt-get: apt-get install chromium chromium-driver")
    install = "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver"
    result = subprocess.run(["sh", "-c", install], capture_output=True, text=True, timeout=900)
    browser, driver = found()
    if not (browser and driver):
        pytest.skip(f"apt-get could not install chromium and chromium-driver: {result.stderr.strip()[-300:]}")
    return browser, driver


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is in the test extras: pip install selenium")
    chromium, chromedriver = chromium_binaries()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=chromedriver))
    yield driver
    driver.quit()
