"""The Serve application: ``Ingress`` (FastAPI) -> ``ImageGenerator`` (the pipeline, dynamic batching).

    serve run configs/serve_tiny.yaml                  # Serve's CLI: import_path serving.app:build_app
    python jobs/serve.py --checkpoint <folder>         # the same file, read by load_serve_file

Deployment options (replicas or autoscaling, ``max_ongoing_requests``, ``ray_actor_options.num_gpus``) come from
the config file's ``deployments`` list; ``serve run`` applies them itself, ``deploy`` passes them to ``application``.
"""

from __future__ import annotations

from ray import serve
from ray.serve.deployment import Application

from models.config import ConfigError
from serving.config import ServeFile, ServeSettings, parse_settings
from serving.generator import ImageGenerator
from serving.ingress import Ingress

DEPLOYMENTS = ("ImageGenerator", "Ingress")


def application(settings: ServeSettings, deployment_options: dict[str, dict] | None = None) -> Application:
    """The bound application; ``deployment_options`` maps a deployment name to its ``Deployment.options``."""
    options = deployment_options or {}
    unknown = sorted(set(options) - set(DEPLOYMENTS))
    if unknown:
        raise ConfigError(f"unknown deployments {unknown}; this application has {list(DEPLOYMENTS)}")
    generator = ImageGenerator.options(**options.get("ImageGenerator", {})).bind(settings)
    return Ingress.options(**options.get("Ingress", {})).bind(settings, generator)


def build_app(args: dict) -> Application:
    """Serve's application builder: the config file's ``args`` are a ``ServeSettings``."""
    return application(parse_settings(args))


def local_url(http_options: dict, route_prefix: str) -> str:
    """Where a client on this machine reaches the application."""
    host = http_options.get("host", "127.0.0.1")
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    return f"http://{host}:{http_options.get('port', 8000)}{route_prefix.rstrip('/')}"


def deploy(served: ServeFile) -> str:
    """Start Serve with the file's HTTP options, run the application and wait until it is ready; returns its URL."""
    serve.start(http_options=served.http_options)
    serve.run(
        application(served.settings, served.deployment_options), name=served.name, route_prefix=served.route_prefix
    )
    return local_url(served.http_options, served.route_prefix)
