"""The Serve config file and the settings model, without Ray: what `serve run` and jobs/serve.py read."""

from __future__ import annotations

import pathlib

import pytest
import yaml

from models.config import ConfigError
from serving.config import load_serve_file, parse_settings
from serving.sizes import parse_size

CONFIG = pathlib.Path(__file__).resolve().parents[2] / "configs" / "serve_tiny.yaml"


def test_serve_config_file_is_valid_for_serve_and_for_us():
    from ray.serve.schema import ServeDeploySchema

    ServeDeploySchema.model_validate(yaml.safe_load(CONFIG.read_text()))
    served = load_serve_file(CONFIG)
    assert served.settings.model.preset == "tiny" and served.route_prefix == "/"
    generator = served.deployment_options["ImageGenerator"]
    assert generator["ray_actor_options"]["num_gpus"] == 0 and generator["autoscaling_config"]["max_replicas"] >= 1
    assert generator["max_ongoing_requests"] >= served.settings.batching.max_batch_images
    assert served.deployment_options["Ingress"]["max_ongoing_requests"] > served.settings.queue.max_in_flight


@pytest.mark.parametrize(
    ("args", "key"),
    [
        ({"limits": {"max_stepz": 3}}, "limits.max_stepz"),
        ({"limits": {"max_n": 0}}, "limits.max_n"),
        ({"defaults": {"size": "100x100"}}, "defaults.size"),
        ({"limits": {"max_n": 9}}, "limits.max_n"),
        ({"limits": {"max_prompt_tokens": 5000}}, "limits.max_prompt_tokens"),
        ({"edit": {"vision_area": 100}}, "edit.vision_area"),
        ({"edit": {"max_upload_bytes": 0}}, "edit.max_upload_bytes"),
        ({"edit": {"max_aspect_ratio": 0.5}}, "edit.max_aspect_ratio"),
        ({"edit": {"mask": True}}, "edit.mask"),
    ],
)
def test_bad_settings_name_the_key(args, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        parse_settings(args)


def test_parse_size():
    assert parse_size("64x48", 64 * 64) == (64, 48)
    for text in ("64x50", "64", "64X64", " 64x64", "-16x16", "0x16"):
        with pytest.raises(ValueError):
            parse_size(text, 1 << 20)
    with pytest.raises(ValueError, match="at most 4096"):
        parse_size("128x128", 4096)


def test_edit_vision_area_matches_the_producers():
    """The vision tower must see an upload at the area the latent store encoded training sources at."""
    from pipelines.encode import EncodeConfig

    served = load_serve_file(CONFIG).settings.edit
    assert (
        served.enabled and served.vision_area == EncodeConfig().edit_vision_area == parse_settings({}).edit.vision_area
    )
