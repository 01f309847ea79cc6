"""The arena application: ``ArenaIngress`` (FastAPI: pages, JSON API, votes in SQLite) -> ``ArenaModels``.

    serve run configs/arena_tiny.yaml          # both applications: the generation API at /, the arena at /arena
    python jobs/arena.py                       # the same file; prints the URLs and the votes as they come in

Routes under the arena's route prefix (``/arena``):

- ``GET /``: the voting page; ``GET /leaderboard.html``: table and charts; ``GET /healthz``.
- ``POST /rounds`` ``{"prompt": optional}``: a new round, two models drawn at random (random sides), one random
  seed for both; answers ``round_id``, ``prompt``, ``expires_at`` and both PNGs (base64), never the names.
- ``GET /rounds/{id}/{left|right}.png``: a round's image drawn again from its stored model, prompt and seed.
- ``POST /rounds/{id}/vote`` ``{"choice": "left" | "right" | "tie" | "both_bad"}``: the round's one vote; answers
  the names. 400 for a bad body or choice or no voter id, 404 unknown round, 409 already voted, 410 expired.
- ``GET /leaderboard``: JSON (Bradley-Terry rating, interval, Elo, counts per model); ``GET /votes.csv``.

A voter is the ``X-Voter-Id`` header, else the ``arena_voter`` cookie, which the page and ``POST /rounds`` set
when a client has neither; the store keeps only a salted hash of it. Errors use the generation API's shape,
``{"error": {"message", "type", "param", "code"}}``. Rounds and votes live in SQLite (``serving.arena.store``); the
leaderboard is recomputed from the stored votes whenever they change, so a restarted server shows the same one.
Keep ``ArenaIngress`` on the node that holds the database file (one replica is plenty: it does no model work).

Every round draws two images, so rounds, PNGs and votes pass abuse limits (``serving.ratelimit``, in the replica's
memory). A key is needed when ``api_key_env`` names one (off by default: an open arena, limited per address); 401
without it. Then, once a request is otherwise valid: per-client rates for rounds and PNGs (``rate_limit.rounds``)
and for votes (``rate_limit.votes``), then per-voter caps over an hour (``rate_limit.voter_rounds``,
``rate_limit.voter_votes``), each 429 with ``Retry-After``; then at most ``queue.max_in_flight`` requests drawing
images at once, the next 503 with ``Retry-After``.
"""

# No ``from __future__ import annotations``, as in serving/ingress.py: FastAPI (through Serve's class-based ingress)
# must see real annotations to tell ``Request`` and ``Response`` from query parameters.
import asyncio
import base64
import dataclasses
import json
import logging
import random
import re
import secrets
import threading
import time
import uuid

import numpy as np
import pydantic
from fastapi import FastAPI, Request, Response
from fastapi.responses import HTMLResponse
from ray import serve
from ray.serve.deployment import Application
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from models.config import ConfigError
from serving.app import application as generation_application
from serving.app import local_url
from serving.arena.chart import elo_history_chart, ratings_chart
from serving.arena.config import MAX_ARENA_PIXELS, ArenaFile, ArenaSettings, parse_arena_settings, read_prompts
from serving.arena.generator import ArenaModels
from serving.arena.page import render_arena_page, render_leaderboard_page
from serving.arena.ratings import CHOICES, Comparison, Standing, elo_history, leaderboard
from serving.arena.store import AlreadyVoted, ArenaStore, Round, RoundExpired, RoundNotFound, votes_csv
from serving.ingress import REPLICA_GONE, install_error_handlers, read_body
from serving.ratelimit import BearerKey, InFlight, RateLimiter, busy, client_id
from serving.schema import MAX_SEED, ApiError, GenerationJob
from serving.sizes import parse_size

logger = logging.getLogger(__name__)

DEPLOYMENTS = ("ArenaModels", "ArenaIngress")
VOTER_HEADER = "X-Voter-Id"
VOTER_COOKIE = "arena_voter"
VOTER_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
MAX_BODY_BYTES = 16 * 1024
SIDES = ("left", "right")

app = FastAPI(title="Qwen-Image arena", docs_url=None, redoc_url=None, openapi_url=None)


install_error_handlers(app, logger)


class RoundRequest(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", strict=True)

    prompt: str | None = None


class VoteRequest(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", strict=True)

    choice: str


def parse_json(raw: bytes, model: type[pydantic.BaseModel]) -> pydantic.BaseModel:
    """A JSON object body (empty: ``{}``) as ``model``; ``ApiError(400)`` naming the field that is wrong."""
    try:
        data = json.loads(raw) if raw.strip() else {}
    except ValueError as error:
        raise ApiError(400, f"request body is not valid JSON: {error}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise ApiError(400, "request body must be a JSON object", code="invalid_json")
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as error:
        first = error.errors()[0]
        param = ".".join(str(part) for part in first["loc"]) or None
        message = {"extra_forbidden": f"unknown field {param!r}", "missing": f"{param!r} is required"}.get(
            first["type"], f"{param}: {first['msg']}"
        )
        raise ApiError(400, message, param=param, code="invalid_value") from None


def given_voter(request: Request) -> str | None:
    """The voter id from the header, else the cookie; ``ApiError(400)`` when it is malformed."""
    voter = request.headers.get(VOTER_HEADER) or request.cookies.get(VOTER_COOKIE)
    if voter is not None and not VOTER_ID.match(voter):
        message = f"voter id must be 1 to 64 characters of letters, digits, '_', '-', '.'; got {voter[:70]!r}"
        raise ApiError(400, message, param="voter_id", code="invalid_voter")
    return voter


@dataclasses.dataclass
class Board:
    """The leaderboard computed from the votes up to ``key`` (number of votes, last vote id)."""

    key: tuple[int, int]
    names: list[str]
    standings: list[Standing]
    # Elo ratings [num_rated_votes + 1, len(names)], for the chart.
    history: np.ndarray


@serve.deployment(name="ArenaIngress", num_replicas=1, max_ongoing_requests=64, ray_actor_options={"num_cpus": 0.5})
@serve.ingress(app)
class ArenaIngress:
    """Draws rounds, stores votes, computes the leaderboard; ``ArenaModels`` makes the images."""

    def __init__(self, settings: ArenaSettings, models: DeploymentHandle):
        self.settings = settings
        self.models = models
        self.names = settings.model_names
        self.prompts = read_prompts(settings.prompts_file) if settings.prompts_file else []
        self.width, self.height = parse_size(settings.generation.size, MAX_ARENA_PIXELS)
        self.store = ArenaStore(settings.database)
        self.random = random.SystemRandom()
        self.board_lock = threading.Lock()
        self.board: Board | None = None
        self.key = BearerKey(settings.api_key_env)
        limits = settings.rate_limit
        self.round_rate = RateLimiter(limits.rounds, what="rounds or images per client", max_clients=limits.max_clients)
        self.vote_rate = RateLimiter(limits.votes, what="votes per client", max_clients=limits.max_clients)
        # Keyed by the voter's hash, as stored: no raw voter id is kept in memory either.
        self.voter_round_rate = RateLimiter(
            limits.voter_rounds, what="rounds per voter", max_clients=limits.max_clients
        )
        self.voter_vote_rate = RateLimiter(limits.voter_votes, what="votes per voter", max_clients=limits.max_clients)
        self.in_flight = InFlight(settings.queue.max_in_flight, settings.queue.retry_after_s)
        num_rounds, num_votes, _ = self.store.counts()
        logger.info(
            "arena on %s: %d models, %d rounds, %d votes", settings.database, len(self.names), num_rounds, num_votes
        )

    # Clients, voters and prompts.

    def client(self, request: Request) -> str:
        """401 unless the request carries the arena's key (when one is set); the client it counts against."""
        return client_id(request, self.key, self.settings.rate_limit)

    def voter(self, request: Request, response: Response) -> str:
        """The request's voter id; a new one (set as a cookie on ``response``) when it has none."""
        voter = given_voter(request)
        if voter is None:
            voter = secrets.token_urlsafe(16)
            root = request.scope.get("root_path", "").rstrip("/") or "/"
            response.set_cookie(VOTER_COOKIE, voter, max_age=365 * 24 * 3600, path=root, httponly=True, samesite="lax")
        return voter

    def prompt(self, typed: str | None) -> tuple[str, str]:
        """(prompt, source): the typed one, checked, else one drawn from the prompt file."""
        limit = self.settings.max_prompt_chars
        if typed is not None:
            typed = typed.strip()
            if not typed:
                message = "prompt: must not be empty (leave it out to draw one from the prompt file)"
                raise ApiError(400, message, param="prompt", code="invalid_value")
            if len(typed) > limit:
                message = f"prompt: {len(typed)} characters; at most {limit} allowed"
                raise ApiError(400, message, param="prompt", code="invalid_value")
            return typed, "user"
        if not self.prompts:
            raise ApiError(400, "this arena has no prompt file: send a 'prompt'", param="prompt", code="invalid_value")
        return self.random.choice(self.prompts), "file"

    # Images.

    async def draw(self, name: str, job: GenerationJob) -> bytes:
        try:
            return await self.models.generate.remote(name, job)
        except (BackPressureError, *REPLICA_GONE) as error:
            raise busy(f"no model replica answered: {error}", self.settings.queue.retry_after_s) from None

    def job(self, shown: Round) -> GenerationJob:
        return GenerationJob(
            prompt=shown.prompt,
            negative_prompt=shown.negative_prompt,
            width=shown.width,
            height=shown.height,
            num_steps=shown.num_steps,
            true_cfg_scale=shown.true_cfg_scale,
            seeds=(shown.seed,),
        )

    # Routes.

    @app.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @app.get("/", response_class=HTMLResponse)
    async def page(self, request: Request) -> HTMLResponse:
        root_path = request.scope.get("root_path", "")
        body = render_arena_page(
            title=self.settings.title,
            root_path=root_path,
            max_prompt_chars=self.settings.max_prompt_chars,
            needs_key=self.key.required,
        )
        response = HTMLResponse(body)
        self.voter(request, response)
        return response

    @app.post("/rounds")
    async def new_round(self, request: Request, response: Response) -> dict:
        client = self.client(request)
        body = parse_json(await read_body(request, MAX_BODY_BYTES), RoundRequest)
        voter = self.voter(request, response)
        prompt, source = self.prompt(body.prompt)
        self.round_rate.admit(client)
        self.voter_round_rate.admit(self.store.voter_hash(voter))
        left, right = self.random.sample(self.names, 2)
        generation = self.settings.generation
        draft = Round(
            round_id=uuid.uuid4().hex,
            created_at=0.0,
            expires_at=0.0,
            prompt=prompt,
            prompt_source=source,
            seed=self.random.randint(0, MAX_SEED),
            model_left=left,
            model_right=right,
            width=self.width,
            height=self.height,
            num_steps=generation.num_inference_steps,
            true_cfg_scale=generation.true_cfg_scale,
            negative_prompt=generation.negative_prompt,
            voter_id=voter,
        )
        job = self.job(draft)
        with self.in_flight.slot():
            images = await asyncio.gather(self.draw(left, job), self.draw(right, job))
        # The voter's time starts when the images exist, not when they were asked for.
        now = time.time()
        shown = dataclasses.replace(draft, created_at=now, expires_at=now + self.settings.round_ttl_s)
        await asyncio.to_thread(self.store.add_round, shown)
        return {
            "round_id": shown.round_id,
            "prompt": prompt,
            "prompt_source": source,
            "created_at": shown.created_at,
            "expires_at": shown.expires_at,
            "images": {side: base64.b64encode(png).decode("ascii") for side, png in zip(SIDES, images, strict=True)},
        }

    @app.get("/rounds/{round_id}/{side}.png")
    async def image(self, round_id: str, side: str, request: Request) -> Response:
        client = self.client(request)
        if side not in SIDES:
            raise ApiError(404, f"side must be 'left' or 'right', got {side!r}", param="side", code="not_found")
        shown = await self.find(round_id)
        self.round_rate.admit(client)
        with self.in_flight.slot():
            png = await self.draw(shown.model_left if side == "left" else shown.model_right, self.job(shown))
        return Response(png, media_type="image/png")

    async def find(self, round_id: str) -> Round:
        try:
            return await asyncio.to_thread(self.store.get_round, round_id)
        except RoundNotFound as error:
            raise ApiError(404, str(error), param="round_id", code="round_not_found") from None

    @app.post("/rounds/{round_id}/vote")
    async def vote(self, round_id: str, request: Request) -> dict:
        client = self.client(request)
        body = parse_json(await read_body(request, MAX_BODY_BYTES), VoteRequest)
        if body.choice not in CHOICES:
            message = f"choice: must be one of {', '.join(CHOICES)}; got {body.choice[:40]!r}"
            raise ApiError(400, message, param="choice", code="invalid_choice")
        voter = given_voter(request)
        if voter is None:
            message = f"no voter id: send the {VOTER_HEADER} header or the {VOTER_COOKIE} cookie that POST rounds set"
            raise ApiError(400, message, param="voter_id", code="missing_voter")
        self.vote_rate.admit(client)
        self.voter_vote_rate.admit(self.store.voter_hash(voter))
        try:
            vote = await asyncio.to_thread(self.store.add_vote, round_id, voter, body.choice)
        except RoundNotFound as error:
            raise ApiError(404, str(error), param="round_id", code="round_not_found") from None
        except RoundExpired as error:
            raise ApiError(410, str(error), param="round_id", code="round_expired") from None
        except AlreadyVoted as error:
            raise ApiError(409, str(error), param="round_id", code="already_voted") from None
        return {
            "vote_id": vote.vote_id,
            "round_id": round_id,
            "choice": vote.choice,
            "winner": vote.winner,
            "models": {"left": vote.round.model_left, "right": vote.round.model_right},
        }

    # The leaderboard.

    def current_board(self) -> Board:
        """The leaderboard of the stored votes, recomputed only when a vote was added since the last one."""
        with self.board_lock:
            _, num_votes, last = self.store.counts()
            if self.board is not None and self.board.key == (num_votes, last):
                return self.board
            votes = self.store.votes()
            voted = {name for vote in votes for name in (vote.round.model_left, vote.round.model_right)}
            # Models no longer registered keep their history on the board.
            names = self.names + sorted(voted - set(self.names))
            comparisons = [Comparison(v.round.model_left, v.round.model_right, v.choice) for v in votes]
            rating = self.settings.rating
            standings = leaderboard(comparisons, names, **rating.model_dump())
            history = elo_history(
                comparisons,
                names,
                k_factor=rating.k_factor,
                initial_rating=rating.initial_rating,
                scale=rating.scale,
                both_bad=rating.both_bad,
            )
            key = (len(votes), votes[-1].vote_id if votes else 0)
            self.board = Board(key=key, names=names, standings=standings, history=history)
            return self.board

    async def board_json(self) -> tuple[Board, dict]:
        board = await asyncio.to_thread(self.current_board)
        num_rounds, _, _ = await asyncio.to_thread(self.store.counts)
        models = [
            {
                "rank": rank,
                **{k: round(v, 3) if isinstance(v, float) else v for k, v in dataclasses.asdict(standing).items()},
                "registered": standing.name in self.names,
            }
            for rank, standing in enumerate(board.standings, start=1)
        ]
        return board, {
            "num_votes": board.key[0],
            "num_rounds": num_rounds,
            "rating": self.settings.rating.model_dump(),
            "models": models,
        }

    @app.get("/leaderboard")
    async def leaderboard_json(self) -> dict:
        return (await self.board_json())[1]

    @app.get("/leaderboard.html", response_class=HTMLResponse)
    async def leaderboard_page(self, request: Request) -> str:
        board, data = await self.board_json()
        rating = self.settings.rating
        charts = [
            ratings_chart(board.standings, board.names, initial_rating=rating.initial_rating),
            elo_history_chart(board.names, board.history),
        ]
        root_path = request.scope.get("root_path", "")
        return render_leaderboard_page(title=self.settings.title, root_path=root_path, board=data, charts=charts)

    @app.get("/votes.csv")
    async def votes(self) -> Response:
        votes = await asyncio.to_thread(self.store.votes)
        headers = {"Content-Disposition": 'attachment; filename="votes.csv"'}
        return Response(votes_csv(votes), media_type="text/csv; charset=utf-8", headers=headers)


def application(settings: ArenaSettings, deployment_options: dict[str, dict] | None = None) -> Application:
    """The bound arena application; ``deployment_options`` maps a deployment name to its ``Deployment.options``."""
    options = deployment_options or {}
    unknown = sorted(set(options) - set(DEPLOYMENTS))
    if unknown:
        raise ConfigError(f"unknown deployments {unknown}; the arena has {list(DEPLOYMENTS)}")
    models = ArenaModels.options(**options.get("ArenaModels", {})).bind(settings)
    return ArenaIngress.options(**options.get("ArenaIngress", {})).bind(settings, models)


def build_app(args: dict) -> Application:
    """Serve's application builder: the config file's ``args`` are an ``ArenaSettings``."""
    return application(parse_arena_settings(args))


def deploy_arena(served: ArenaFile) -> str:
    """Run the arena application in the running Serve instance and wait until it is ready; returns its URL."""
    serve.run(
        application(served.arena.settings, served.arena.deployment_options),
        name=served.arena.name,
        route_prefix=served.arena.route_prefix,
    )
    return local_url(served.http_options, served.arena.route_prefix)


def deploy(served: ArenaFile, *, with_generation: bool = True) -> dict[str, str]:
    """Start Serve with the file's HTTP options and run the arena and (when the file has one and ``with_generation``)
    the generation API together, so that their replicas load in parallel; waits until both are ready and returns
    their URLs by name (``arena``, ``generation``)."""
    serve.start(http_options=served.http_options)
    arena = served.arena
    targets = [
        serve.RunTarget(
            application(arena.settings, arena.deployment_options), name=arena.name, route_prefix=arena.route_prefix
        )
    ]
    urls = {"arena": local_url(served.http_options, arena.route_prefix)}
    generation = served.generation
    if with_generation and generation is not None:
        bound = generation_application(generation.settings, generation.deployment_options)
        targets.append(serve.RunTarget(bound, name=generation.name, route_prefix=generation.route_prefix))
        urls["generation"] = local_url(served.http_options, generation.route_prefix)
    serve.run_many(targets)
    return urls
