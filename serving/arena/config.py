"""Settings of the arena application, and reading them (with the generation API beside them) from a Serve config file.

A Serve config file such as ``configs/arena_tiny.yaml`` (Serve's own schema: ``serve run`` takes it) holds the
HTTP options and two applications: the generation API (``serving.app:build_app``, args a
``serving.config.ServeSettings``, usually at ``/``) and the arena (``serving.arena.app:build_app``, args an
``ArenaSettings``, at ``/arena``). ``load_arena_file`` reads both; ``jobs/arena.py`` deploys them.

Relative paths in the settings (``database``, ``prompts_file``, a model's ``checkpoint``) are taken from the
repository root, wherever the process that builds the application runs; on a cluster give absolute paths on a
persistent volume of the node that runs ``ArenaIngress``.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections import Counter
from typing import Literal

import pydantic
import yaml

from models.config import ConfigError, StrictModel, parse_overrides
from models.generation import DEFAULT_NEGATIVE_PROMPT, DEFAULT_TRUE_CFG
from serving.config import ModelSettings, ServeFile, parse_settings
from serving.ratelimit import ClientLimits, Rate
from serving.sizes import parse_size

REPO = pathlib.Path(__file__).resolve().parents[2]
ARENA_IMPORT_PATH = "serving.arena.app:build_app"
GENERATION_IMPORT_PATH = "serving.app:build_app"
# An arena image is shown next to another on one page; more than this many pixels is a config mistake.
MAX_ARENA_PIXELS = 2048 * 2048


class RoundGeneration(StrictModel):
    """How both images of a round are made; both use the round's seed, so they start from the same noise."""

    size: str = "256x256"
    num_inference_steps: pydantic.PositiveInt = 20
    true_cfg_scale: pydantic.NonNegativeFloat = DEFAULT_TRUE_CFG
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT

    @pydantic.field_validator("size")
    @classmethod
    def _size(cls, size: str) -> str:
        parse_size(size, MAX_ARENA_PIXELS)
        return size


class RatingSettings(StrictModel):
    """Keyword arguments of ``serving.arena.ratings.leaderboard`` (see that module for the maths)."""

    k_factor: pydantic.PositiveFloat = 32.0
    initial_rating: float = 1000.0
    # Rating points per factor of 10 in the odds of winning (Elo's 400).
    scale: pydantic.PositiveFloat = 400.0
    # "tie": "both bad" rates as a tie (Chatbot Arena's choice); "ignore": it is counted but not rated.
    both_bad: Literal["tie", "ignore"] = "tie"
    # Virtual ties between every pair in the Bradley-Terry fit: finite ratings for a model that never won.
    prior_ties: pydantic.NonNegativeFloat = 1.0
    num_bootstrap: pydantic.NonNegativeInt = 200
    bootstrap_seed: int = 0
    confidence: float = pydantic.Field(default=0.95, gt=0.0, lt=1.0)


class ArenaQueue(StrictModel):
    """Back-pressure in ``ArenaIngress``: requests that draw images (new rounds, a round's PNG) held at once."""

    # The next one gets 503 with Retry-After at once: a round is two images, and a long queue only times clients out.
    max_in_flight: pydantic.PositiveInt = 16
    retry_after_s: pydantic.PositiveInt = 5


class ArenaRateLimit(ClientLimits):
    """Per-client and per-voter rates in ``ArenaIngress`` (``serving.ratelimit``); ``null`` turns one off.

    A client is the arena's key when one is set (``api_key_env``), else the address. ``rounds`` counts new rounds
    and round PNGs (each draws images), ``votes`` counts votes; ``voter_rounds`` and ``voter_votes`` cap one voter
    id (the ``X-Voter-Id`` header or the cookie) over an hour. Voter ids are made by clients, so the per-client rates
    are what bound a flood; the per-voter caps bound what one voter adds to the leaderboard. Only requests that passed
    every other check are counted. The defaults let a person vote at any pace a person votes.
    """

    rounds: Rate | None = Rate(requests=30, period_s=60.0, burst=10)
    votes: Rate | None = Rate(requests=120, period_s=60.0, burst=60)
    # One round or vote every 10 s over an hour, 60 in a row.
    voter_rounds: Rate | None = Rate(requests=360, period_s=3600.0, burst=60)
    voter_votes: Rate | None = Rate(requests=360, period_s=3600.0, burst=60)


class ArenaSettings(StrictModel):
    """The arena application's ``args`` in a Serve config file."""

    # Each entry is a generation model: a preset (``seed`` picks the tiny preset's random weights) or a checkpoint
    # folder written by training; ``name`` is its id on the leaderboard and must be unique.
    models: list[ModelSettings] = pydantic.Field(min_length=2)
    # One prompt per line (blank lines and lines starting with '#' skipped); without it users type every prompt.
    prompts_file: str | None = None
    # The SQLite file holding rounds and votes (created with its folder when missing).
    database: str = "outputs/arena/arena.sqlite"
    # A round takes votes for this long after its images were made; later votes get 410.
    round_ttl_s: pydantic.PositiveFloat = 900.0
    max_prompt_chars: pydantic.PositiveInt = 500
    generation: RoundGeneration = RoundGeneration()
    rating: RatingSettings = RatingSettings()
    title: str = "Qwen-Image arena"
    queue: ArenaQueue = ArenaQueue()
    rate_limit: ArenaRateLimit = ArenaRateLimit()
    # Name of the environment variable (in the ArenaIngress replica) holding the arena's key. Off by default (an open
    # arena, limited per address); when set and not empty, new rounds, round PNGs and votes need
    # 'Authorization: Bearer <key>' (the page asks for it); the pages, the leaderboard and votes.csv stay open.
    api_key_env: str | None = None

    @pydantic.field_validator("models")
    @classmethod
    def _unique_names(cls, models: list[ModelSettings]) -> list[ModelSettings]:
        repeated = sorted(name for name, count in Counter(model.name for model in models).items() if count > 1)
        if repeated:
            raise ValueError(f"model names must be unique; repeated: {repeated} (give each model its own 'name')")
        return models

    @property
    def model_names(self) -> list[str]:
        return [model.name for model in self.models]


def resolve(path: str, base: pathlib.Path = REPO) -> str:
    """An absolute path: ``path`` itself when absolute, else under ``base``."""
    candidate = pathlib.Path(path).expanduser()
    return str(candidate if candidate.is_absolute() else (base / candidate).resolve())


def parse_arena_settings(args: dict) -> ArenaSettings:
    """``ArenaSettings`` from a config's ``args``, paths made absolute; ``ConfigError`` names every bad key."""
    try:
        settings = ArenaSettings.model_validate(args)
    except pydantic.ValidationError as error:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in error.errors())
        raise ConfigError(f"invalid arena settings: {problems}") from None
    settings.database = resolve(settings.database)
    if settings.prompts_file:
        settings.prompts_file = resolve(settings.prompts_file)
    for model in settings.models:
        if model.checkpoint:
            model.checkpoint = resolve(model.checkpoint)
    return settings


def read_prompts(path: str) -> list[str]:
    """The prompts of a prompt file; ``ConfigError`` when it is missing or holds none."""
    file = pathlib.Path(path)
    if not file.is_file():
        raise ConfigError(f"prompts_file {path} does not exist")
    prompts = [line.strip() for line in file.read_text(encoding="utf-8").splitlines()]
    prompts = [prompt for prompt in prompts if prompt and not prompt.startswith("#")]
    if not prompts:
        raise ConfigError(f"prompts_file {path} holds no prompts")
    return prompts


@dataclasses.dataclass
class ArenaApp:
    """The arena application of a Serve config file."""

    name: str
    route_prefix: str
    settings: ArenaSettings
    # Serve options per deployment name (``ArenaModels``, ``ArenaIngress``), as ``Deployment.options`` takes them.
    deployment_options: dict[str, dict]


@dataclasses.dataclass
class ArenaFile:
    """A Serve config file with the arena and, optionally, the generation API in the same Serve instance."""

    http_options: dict
    arena: ArenaApp
    generation: ServeFile | None


def _deployment_options(application: dict) -> dict[str, dict]:
    options = {}
    for deployment in application.get("deployments") or []:
        deployment = dict(deployment)
        options[deployment.pop("name")] = deployment
    return options


def load_arena_file(path: str | pathlib.Path, overrides: list[str] | None = None) -> ArenaFile:
    """Read a Serve config file with one arena application (and at most one generation application).

    ``overrides`` (``key=value``, dotted keys, YAML values) change the arena's ``args``.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise ConfigError(f"arena config {path} does not exist")
    data = yaml.safe_load(path.read_text()) or {}
    applications = data.get("applications") or []
    arenas = [app for app in applications if app.get("import_path") == ARENA_IMPORT_PATH]
    generations = [app for app in applications if app.get("import_path") == GENERATION_IMPORT_PATH]
    if len(arenas) != 1 or len(generations) > 1 or len(arenas) + len(generations) != len(applications):
        raise ConfigError(
            f"{path}: 'applications' must hold one {ARENA_IMPORT_PATH} application and at most one "
            f"{GENERATION_IMPORT_PATH} application, nothing else"
        )
    http_options = dict(data.get("http_options") or {})
    arena = arenas[0]
    args = _merge(arena.get("args") or {}, parse_overrides(overrides or []))
    generation = None
    if generations:
        application = generations[0]
        generation = ServeFile(
            http_options=http_options,
            name=application.get("name", "default"),
            route_prefix=application.get("route_prefix", "/"),
            settings=parse_settings(application.get("args") or {}),
            deployment_options=_deployment_options(application),
        )
    return ArenaFile(
        http_options=http_options,
        arena=ArenaApp(
            name=arena.get("name", "arena"),
            route_prefix=arena.get("route_prefix", "/arena"),
            settings=parse_arena_settings(args),
            deployment_options=_deployment_options(arena),
        ),
        generation=generation,
    )


def _merge(base: dict, update: dict) -> dict:
    merged = dict(base)
    for key, value in update.items():
        nested = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = _merge(merged[key], value) if nested else value
    return merged
