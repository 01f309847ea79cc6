"""Serving job: a training checkpoint (or a preset) behind the OpenAI-compatible images API on Ray Serve.

    python jobs/serve.py                                              # tiny preset, configs/serve_tiny.yaml
    python jobs/serve.py --checkpoint outputs/tiny/pretrain/tiny/ray/tiny-01-s256-text/checkpoint_000001/model
    python jobs/serve.py --config configs/serve_tiny.yaml --port 8080
    QWEN_IMAGE_API_KEY=secret python jobs/serve.py                    # every route but /healthz and / needs it

Connects to ``RAY_ADDRESS`` when set, else starts a local Ray; prints where the server listens and a ``curl``
example, then serves until Ctrl-C. ``serve run configs/serve_tiny.yaml`` runs the same application.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from ray import serve  # noqa: E402

from models.ray_runtime import init_ray  # noqa: E402
from serving.app import deploy  # noqa: E402
from serving.config import load_serve_file, parse_settings  # noqa: E402

DEFAULT_CONFIG = pathlib.Path(__file__).resolve().parents[1] / "configs" / "serve_tiny.yaml"


def main(argv: list[str] | None = None) -> str:
    """Deploy and return the application's URL (Serve keeps running in the background)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="Serve config file (configs/serve_*.yaml)")
    parser.add_argument("--checkpoint", help="checkpoint folder written by training (diffusers layout)")
    parser.add_argument("--preset", help="preset to serve when no checkpoint is given (the config's, else tiny)")
    parser.add_argument("--weights-dir", help="local weights folder for presets that read one (qwen-image)")
    parser.add_argument(
        "--adapter",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="serve a LoRA adapter (diffusers format) as <model name>:NAME; repeat for more (added to the config's)",
    )
    parser.add_argument("--host", help="HTTP host (the config's http_options.host by default)")
    parser.add_argument("--port", type=int, help="HTTP port (the config's http_options.port by default)")
    args = parser.parse_args(argv)

    served = load_serve_file(args.config)
    model = served.settings.model.model_dump()
    if args.checkpoint:
        folder = pathlib.Path(args.checkpoint).resolve()  # replicas run in other directories
        if not (folder / "model_index.json").is_file():
            parser.error(f"{folder} is not a checkpoint folder (no model_index.json): pass the checkpoint's model/")
        model["checkpoint"] = str(folder)
    for key, value in (("preset", args.preset), ("weights_dir", args.weights_dir)):
        if value:
            model[key] = value
    for spec in args.adapter:
        name, _, path = spec.partition("=")
        if not name or not path:
            parser.error(f"--adapter takes NAME=PATH, got {spec!r}")
        model["adapters"].append({"name": name, "path": path})
    for adapter in model["adapters"]:  # replicas run in other directories
        adapter["path"] = str(pathlib.Path(adapter["path"]).resolve())
    served.settings = parse_settings({**served.settings.model_dump(), "model": model})
    for key, value in (("host", args.host), ("port", args.port)):
        if value:
            served.http_options[key] = value

    init_ray()
    url = deploy(served)
    source = model["checkpoint"] or f"preset {model['preset']}"
    print(f"[serve] {source} as {model['name']!r} at {url}/ (web page), {url}/v1/images/generations", flush=True)
    for adapter in model["adapters"]:
        print(f"[serve] adapter {adapter['path']} as {model['name']}:{adapter['name']!s}", flush=True)
    print(
        f"[serve] try: curl {url}/v1/images/generations -H 'Content-Type: application/json' "
        f"""-d '{{"prompt": "a red fox", "size": "256x256", "seed": 0}}' | python -c """
        """'import sys, json, base64; sys.stdout.buffer.write(base64.b64decode(json.load(sys.stdin)["data"][0]["b64_json"]))' """
        "> fox.png",
        flush=True,
    )
    return url


if __name__ == "__main__":
    main()
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.shutdown()
