"""The arena on a live Serve instance started by ``jobs/arena.py`` from ``configs/arena_tiny.yaml`` (the generation
API at /, the arena at /arena; tiny presets, 64x64, two steps): a round voted in headless Chromium, rejected votes,
a flood of rounds and votes bounded, votes kept across a restart. The SQLite store (voter ids kept as salted hashes
only) and the config file are also checked without Ray.

Some rounds are written straight into the arena's database and only their votes go through the API: drawing a
pair of images takes seconds on two cores, and these tests are about votes, not images.
"""

from __future__ import annotations

import base64
import csv
import dataclasses
import importlib.util
import io
import math
import os
import pathlib
import random
import shutil
import sqlite3
import threading
import time
import uuid

import numpy as np
import pytest
import requests
import yaml
from PIL import Image

from models.config import ConfigError
from serving.arena.config import load_arena_file
from serving.arena.ratings import Comparison, leaderboard
from serving.arena.store import AlreadyVoted, ArenaStore, Round, RoundExpired, salt_path, votes_csv

from .conftest import flood, free_port

REPO = pathlib.Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "arena_tiny.yaml"
# The README's picture of the leaderboard. The test writes it to its own folder; with UPDATE_DOCS_IMAGES=1 it also
# replaces the README's copy (a test run leaves the checkout as it found it otherwise).
DOCS_SCREENSHOT = REPO / "docs" / "images" / "arena_leaderboard.png"
# Abuse limits set here rather than taken from the defaults: one request drawing images at a time; per address 4
# rounds at once then one every 10 s, and votes enough for the vote plan cast twice within seconds; per voter 20
# votes in a row. The test client plays one trusted proxy, so X-Forwarded-For names the client (requests without
# it count against 127.0.0.1, which the other tests stay well within).
ROUNDS_BURST = 4
VOTER_BURST = 20
OVERRIDES = [
    "generation.size=64x64",
    "generation.num_inference_steps=2",
    "rating.num_bootstrap=100",
    "queue.max_in_flight=1",
    f"rate_limit.rounds={{requests: 6, period_s: 60, burst: {ROUNDS_BURST}}}",
    "rate_limit.votes={requests: 600, period_s: 60, burst: 100}",
    f"rate_limit.voter_votes={{requests: 360, period_s: 3600, burst: {VOTER_BURST}}}",
    "rate_limit.trusted_proxies=1",
]
MODELS = ["tiny-seed0", "tiny-seed1", "tiny-seed2"]
STRENGTHS = {"tiny-seed0": 1100.0, "tiny-seed1": 1000.0, "tiny-seed2": 900.0}


def vote_plan(num_votes: int = 36, seed: int = 0) -> list[tuple[str, str, str]]:
    """(left, right, choice) from fixed strengths (tiny-seed0 best), a tenth "tie" and a tenth "both bad"."""
    rng = random.Random(seed)
    plan = []
    for _ in range(num_votes):
        left, right = rng.sample(MODELS, 2)
        p_left = 1.0 / (1.0 + 10.0 ** ((STRENGTHS[right] - STRENGTHS[left]) / 400.0))
        draw = rng.random()
        choice = "tie" if draw < 0.1 else "both_bad" if draw < 0.2 else "left" if rng.random() < p_left else "right"
        plan.append((left, right, choice))
    return plan


VOTE_PLAN = vote_plan()


def load_job(name: str):
    """A job script as a module (``jobs/`` is not a package)."""
    spec = importlib.util.spec_from_file_location(f"job_{name}", REPO / "jobs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclasses.dataclass
class Arena:
    url: str
    generation_url: str
    database: pathlib.Path
    port: int


@pytest.fixture(scope="module")
def arena(ray_session, tmp_path_factory):
    from ray import serve

    database = tmp_path_factory.mktemp("arena") / "arena.sqlite"
    port = free_port()
    argv = ["--config", str(CONFIG), "--database", str(database), "--host", "127.0.0.1", "--port", str(port)]
    urls = load_job("arena").main([*argv, *OVERRIDES])
    yield Arena(url=urls["arena"], generation_url=urls["generation"], database=database, port=port)
    serve.shutdown()


def stored_round(database: pathlib.Path, left: str, right: str, *, age_s: float = 0.0) -> str:
    """A round written into the database as the server would write it (``age_s`` seconds ago, 900 s to live)."""
    created = time.time() - age_s
    round_id = uuid.uuid4().hex
    shown = Round(round_id, created, created + 900.0, "a test prompt", "file", 7, left, right, 64, 64, 2, 4.0, " ")
    store = ArenaStore(database)
    store.add_round(shown)
    store.close()
    return round_id


def vote(url: str, round_id: str, choice: object, voter: str | None = "voter-test", **kwargs) -> requests.Response:
    headers = {"X-Voter-Id": voter} if voter else {}
    return requests.post(
        f"{url}/rounds/{round_id}/vote", json={"choice": choice}, headers=headers, timeout=60, **kwargs
    )


def cast_plan(arena: Arena) -> None:
    """The plan's votes, each from its own voter."""
    for index, (left, right, choice) in enumerate(VOTE_PLAN):
        response = vote(arena.url, stored_round(arena.database, left, right), choice, voter=f"plan-voter-{index}")
        assert response.status_code == 200, response.text


def board(arena: Arena) -> dict:
    response = requests.get(f"{arena.url}/leaderboard", timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def by_name(data: dict) -> dict[str, dict]:
    return {entry["name"]: entry for entry in data["models"]}


def png_pixels(data: bytes) -> np.ndarray:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_arena_round_and_vote(arena, browser, tmp_path):
    """Chromium sees two anonymous images, clicks left; the vote is stored and moves the leaderboard."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    cast_plan(arena)
    before = board(arena)
    assert before["num_votes"] >= len(VOTE_PLAN)
    assert [entry["name"] for entry in before["models"]][0] == "tiny-seed0"  # the plan's favourite leads

    browser.set_window_size(1100, 900)
    browser.get(f"{arena.url}/")
    body = browser.find_element(By.TAG_NAME, "body")
    images = [browser.find_element(By.ID, f"{side}-image") for side in ("left", "right")]
    natural = "return [arguments[0].naturalWidth, arguments[0].naturalHeight]"
    WebDriverWait(browser, 120).until(lambda _: all(browser.execute_script(natural, i) == [64, 64] for i in images))
    round_id = body.get_attribute("data-round")
    assert round_id and browser.find_element(By.ID, "round-prompt").text
    assert not any(name in body.text for name in MODELS)  # anonymous until the vote
    shown = [png_pixels(base64.b64decode(i.get_attribute("src").split(",", 1)[1])) for i in images]

    browser.find_element(By.ID, "vote-left").click()
    WebDriverWait(browser, 30).until(lambda _: body.get_attribute("data-voted") == round_id)
    left_name = browser.find_element(By.ID, "left-name").text
    right_name = browser.find_element(By.ID, "right-name").text
    assert {left_name, right_name} <= set(MODELS) and left_name != right_name
    assert browser.find_element(By.ID, "status").text.startswith("vote recorded: left")

    # Stored: this round, this choice, the browser's voter cookie (as its salted hash), the models in the order shown.
    store = ArenaStore(arena.database)
    last = store.votes()[-1]
    cookie = browser.get_cookie("arena_voter")["value"]
    assert last.voter_id == store.voter_hash(cookie) != cookie
    store.close()
    assert (last.round.round_id, last.choice, last.winner) == (round_id, "left", left_name)
    assert (last.round.model_left, last.round.model_right) == (left_name, right_name)

    after = board(arena)
    assert after["num_votes"] == before["num_votes"] + 1
    old, new = by_name(before), by_name(after)
    assert new[left_name]["wins"] == old[left_name]["wins"] + 1
    assert new[left_name]["elo"] > old[left_name]["elo"] and new[right_name]["elo"] < old[right_name]["elo"]

    # The round is reproducible: its stored model, prompt and seed give the image shown again.
    again = requests.get(f"{arena.url}/rounds/{round_id}/left.png", timeout=120)
    assert again.status_code == 200 and again.headers["content-type"] == "image/png"
    assert np.abs(png_pixels(again.content).astype(int) - shown[0].astype(int)).max() <= 1
    assert np.abs(shown[0].astype(int) - shown[1].astype(int)).max() > 10  # two models, two images

    # The leaderboard page: a row per model, both charts; its screenshot goes into the README.
    browser.get(f"{arena.url}/leaderboard.html")
    rows = browser.find_elements(By.CSS_SELECTOR, "#leaderboard tbody tr")
    assert [row.get_attribute("data-model") for row in rows] == [entry["name"] for entry in after["models"]]
    assert f"{after['num_votes']} votes" in browser.find_element(By.ID, "summary").text
    assert len(browser.find_elements(By.CSS_SELECTOR, "#ratings-chart circle")) == len(MODELS)
    assert len(browser.find_elements(By.CSS_SELECTOR, "#elo-chart polyline")) == len(MODELS)
    # The whole page in one shot: a viewport exactly as tall as the page.
    height = browser.execute_script("return document.documentElement.scrollHeight")
    metrics = {"width": 1000, "height": height, "deviceScaleFactor": 1, "mobile": False}
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    screenshot = tmp_path / "arena_leaderboard.png"
    assert browser.save_screenshot(str(screenshot))
    browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    shot = Image.open(screenshot)
    assert shot.size == (1000, height) and height > 700
    if os.environ.get("UPDATE_DOCS_IMAGES") == "1":
        DOCS_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(screenshot, DOCS_SCREENSHOT)


def test_rejects_double_and_expired_votes(arena):
    url = arena.url
    start = board(arena)["num_votes"]
    created = requests.post(f"{url}/rounds", json={"prompt": "a red fox in the snow"}, timeout=120)
    assert created.status_code == 200, created.text
    answer = created.json()
    assert answer["prompt"] == "a red fox in the snow" and answer["prompt_source"] == "user"
    assert set(answer["images"]) == {"left", "right"} and not any(name in created.text for name in MODELS)
    cookie = created.cookies.get("arena_voter")
    assert cookie  # a client without a voter id gets one
    round_id = answer["round_id"]

    def refused(response: requests.Response, status: int, code: str) -> dict:
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert error["code"] == code, error
        return error

    refused(vote(url, round_id, "middle"), 400, "invalid_choice")
    refused(vote(url, round_id, 1), 400, "invalid_value")
    refused(vote(url, round_id, "left", voter=None), 400, "missing_voter")
    refused(vote(url, round_id, "left", voter="no spaces allowed"), 400, "invalid_voter")
    ok = vote(url, round_id, "right", voter=None, cookies={"arena_voter": cookie})
    assert ok.status_code == 200, ok.text
    assert ok.json()["models"]["right"] == ok.json()["winner"] and ok.json()["winner"] in MODELS
    again = refused(vote(url, round_id, "left", voter=None, cookies={"arena_voter": cookie}), 409, "already_voted")
    assert "you already voted" in again["message"]
    other = refused(vote(url, round_id, "left", voter="someone-else"), 409, "already_voted")
    assert "already has its vote" in other["message"]

    expired = stored_round(arena.database, "tiny-seed0", "tiny-seed1", age_s=1000.0)  # 900 s to live
    assert "expired" in refused(vote(url, expired, "left"), 410, "round_expired")["message"]
    refused(vote(url, uuid.uuid4().hex, "left"), 404, "round_not_found")
    refused(requests.post(f"{url}/rounds", json={"prompt": "x" * 501}, timeout=60), 400, "invalid_value")
    refused(requests.post(f"{url}/rounds", json={"prompt": "   "}, timeout=60), 400, "invalid_value")
    refused(requests.post(f"{url}/rounds", json={"style": "vivid"}, timeout=60), 400, "invalid_value")

    # Only the one accepted vote counts, and the CSV holds it with its round.
    assert board(arena)["num_votes"] == start + 1
    text = requests.get(f"{url}/votes.csv", timeout=60).text
    rows = list(csv.DictReader(io.StringIO(text)))
    row = next(row for row in rows if row["round_id"] == round_id)
    store = ArenaStore(arena.database)
    hashed = store.voter_hash(cookie)
    store.close()
    assert (row["choice"], row["voter_id"], row["winner"]) == ("right", hashed, row["model_right"])
    assert cookie not in text and "plan-voter-" not in text  # no raw voter id, only their hashes
    assert row["prompt"] == "a red fox in the snow" and row["prompt_source"] == "user"
    assert expired not in {row["round_id"] for row in rows}


def test_both_applications_in_one_serve(arena):
    assert requests.get(f"{arena.generation_url}/healthz", timeout=30).json() == {"status": "ok"}
    assert requests.get(f"{arena.url}/healthz", timeout=30).json() == {"status": "ok"}
    assert "/v1/images/generations" in requests.get(f"{arena.generation_url}/", timeout=30).text
    page = requests.get(f"{arena.url}/", timeout=30)
    assert "vote-both_bad" in page.text and page.cookies.get("arena_voter")


def test_arena_round_flood_is_bounded(arena):
    """Twelve rounds at once from one address: at most the burst get past the rate (one at a time past the in-flight
    bound, the rest 503), the others 429 with Retry-After; that client stays refused while another address gets its
    round. One voter id voting from four addresses is capped per voter."""
    url = arena.url
    flooder = {"X-Forwarded-For": "198.51.100.1"}
    num_requests = 12
    responses, elapsed = flood(
        lambda: requests.post(f"{url}/rounds", json={}, headers=flooder, timeout=120), num_requests
    )
    statuses = [response.status_code for response in responses]
    assert len(statuses) == num_requests and set(statuses) <= {200, 429, 503}, statuses
    # The burst, plus one round per 10 s the flood lasted, got past the rate; one at a time past the in-flight bound.
    admitted = statuses.count(200) + statuses.count(503)
    assert statuses.count(200) >= 1 and admitted <= ROUNDS_BURST + elapsed / 10 + 1, statuses
    limited = [response for response in responses if response.status_code == 429]
    assert limited
    for response in limited:
        # One round every 10 s: the wait rounded up, less the moments since the last round was admitted.
        assert 1 <= int(response.headers["Retry-After"]) <= 10, response.headers
        error = response.json()["error"]
        assert error["code"] == "rate_limit_exceeded" and error["param"] is None and "rounds" in error["message"]
    for response in responses:
        if response.status_code == 503:
            assert response.headers["Retry-After"] == "5" and response.json()["error"]["code"] == "server_busy"

    again = requests.post(f"{url}/rounds", json={}, headers=flooder, timeout=120)
    assert again.status_code == 429, again.text
    other = requests.post(f"{url}/rounds", json={}, headers={"X-Forwarded-For": "198.51.100.2"}, timeout=120)
    assert other.status_code == 200, other.text
    assert set(other.json()["images"]) == {"left", "right"}

    # Per voter: VOTER_BURST votes in a row, whatever address they come from; votes on unknown rounds count too
    # (checked before the store), so nothing lands on the leaderboard.
    def ballot(index: int) -> requests.Response:
        headers = {"X-Voter-Id": "stuffer", "X-Forwarded-For": f"198.51.100.{10 + index % 4}"}
        return requests.post(
            f"{url}/rounds/{uuid.uuid4().hex}/vote", json={"choice": "left"}, headers=headers, timeout=60
        )

    started = time.monotonic()
    ballots = [ballot(index) for index in range(VOTER_BURST + 2)]
    elapsed = time.monotonic() - started
    assert [b.status_code for b in ballots] == [404] * VOTER_BURST + [429] * 2
    assert "votes per voter" in ballots[-1].json()["error"]["message"]
    # 360 an hour: one every 10 s, less the time the burst itself took (seconds on a loaded machine).
    assert 10 - math.ceil(elapsed) <= int(ballots[-1].headers["Retry-After"]) <= 10


def test_votes_survive_restart(arena):
    """Stop the arena application, start it again on the same SQLite file: the same votes, the same leaderboard."""
    from ray import serve

    from serving.arena.app import deploy_arena

    cast_plan(arena)
    still_open = stored_round(arena.database, "tiny-seed1", "tiny-seed2")
    before, csv_before = board(arena), requests.get(f"{arena.url}/votes.csv", timeout=60).text
    assert before["num_votes"] >= len(VOTE_PLAN) and csv_before.count("\n") == before["num_votes"] + 1

    serve.delete("arena")
    assert requests.get(f"{arena.url}/leaderboard", timeout=30).status_code == 404  # gone, not cached somewhere
    served = load_arena_file(CONFIG, [*OVERRIDES, f"database={arena.database}"])
    served.http_options.update(host="127.0.0.1", port=arena.port)
    assert deploy_arena(served) == arena.url

    assert board(arena) == before
    assert requests.get(f"{arena.url}/votes.csv", timeout=60).text == csv_before
    # Rounds are kept too: one shown before the restart still takes its vote, one voted before refuses another.
    assert vote(arena.url, still_open, "left").status_code == 200
    voted = csv_before.splitlines()[1].split(",")[2]
    assert vote(arena.url, voted, "left").status_code == 409
    assert board(arena)["num_votes"] == before["num_votes"] + 1


def test_store_one_vote_per_round_under_races(tmp_path):
    """Eight connections (as from eight processes) vote on one round at once: exactly one vote lands."""
    database = tmp_path / "race.sqlite"
    round_id = stored_round(database, "a", "b")
    outcomes: list[str] = []
    barrier = threading.Barrier(8)

    def one(index: int) -> None:
        store = ArenaStore(database)
        barrier.wait()
        try:
            store.add_vote(round_id, f"voter-{index}", "left")
            outcomes.append("ok")
        except AlreadyVoted:
            outcomes.append("409")
        finally:
            store.close()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["409"] * 7 + ["ok"]
    store = ArenaStore(database)
    assert store.connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert len(store.votes()) == 1
    with pytest.raises(RoundExpired):
        store.add_vote(stored_round(database, "a", "b"), "voter-x", "tie", now=time.time() + 901)
    with pytest.raises(ValueError, match="choice"):
        store.add_vote(round_id, "voter-x", "middle")


def test_votes_csv_holds_voter_hashes_only(tmp_path):
    """Voter ids go into the store (and so into votes.csv) only as salted hashes; the salt lives beside the database
    and nowhere else; a second vote by one voter is still recognised; ratings come out as before; a database from
    before hashing (raw ids, schema 1) is hashed in place when opened."""
    database = tmp_path / "arena.sqlite"
    round_id = stored_round(database, "a", "b")
    store = ArenaStore(database)
    hashed = store.voter_hash("alice-raw-voter")
    assert hashed.startswith("hmac:") and len(hashed) == len("hmac:") + 32
    assert store.add_vote(round_id, "alice-raw-voter", "left").voter_id == hashed
    with pytest.raises(AlreadyVoted) as again:
        store.add_vote(round_id, "alice-raw-voter", "tie")
    assert again.value.same_voter  # recognised through the hash
    now = time.time()
    drawn = Round(
        uuid.uuid4().hex, now, now + 900.0, "a prompt", "user", 3, "b", "a", 64, 64, 2, 4.0, " ", "bob-raw-voter"
    )
    store.add_round(drawn)
    assert store.get_round(drawn.round_id).voter_id == store.voter_hash("bob-raw-voter")
    store.add_vote(drawn.round_id, "bob-raw-voter", "right")

    text = votes_csv(store.votes())
    assert hashed in text and store.voter_hash("bob-raw-voter") in text
    store.close()
    stored = b"".join(path.read_bytes() for path in tmp_path.glob("arena.sqlite*") if path.suffix != ".salt")
    assert "raw-voter" not in text and b"raw-voter" not in stored
    salt = salt_path(database)
    assert salt.stat().st_mode & 0o777 == 0o600
    assert salt.read_text().strip() not in text and salt.read_bytes().strip() not in stored
    assert ArenaStore(database).voter_hash("alice-raw-voter") == hashed  # stable across opens (and restarts)
    other = ArenaStore(tmp_path / "other.sqlite")
    assert other.voter_hash("alice-raw-voter") != hashed  # another arena, another salt

    # Ratings read models and choices, never voters: the same board from the hashed store.
    comparisons = [Comparison(v.round.model_left, v.round.model_right, v.choice) for v in ArenaStore(database).votes()]
    board = leaderboard(comparisons, ["a", "b"], num_bootstrap=10)
    assert [standing.name for standing in board] == ["a", "b"] and board[0].wins == 2

    # A database written before hashing: raw ids in both tables, schema version 1.
    legacy = tmp_path / "legacy.sqlite"
    old_round = stored_round(legacy, "a", "b")
    connection = sqlite3.connect(legacy)
    connection.execute("UPDATE rounds SET voter_id = 'carol-raw-voter'")
    connection.execute(
        "INSERT INTO votes (round_id, voter_id, choice, voted_at) VALUES (?, 'carol-raw-voter', 'left', 0)",
        (old_round,),
    )
    connection.execute("PRAGMA user_version=1")
    connection.commit()
    connection.close()
    migrated = ArenaStore(legacy)
    (old,) = migrated.votes()
    assert old.voter_id == old.round.voter_id == migrated.voter_hash("carol-raw-voter")
    assert migrated.connection.execute("PRAGMA user_version").fetchone()[0] == 2
    assert "carol-raw-voter" not in votes_csv(migrated.votes())
    migrated.close()
    for leftover in (legacy, legacy.with_name(legacy.name + "-wal")):  # overwritten, not just unlinked
        assert not leftover.exists() or b"carol-raw-voter" not in leftover.read_bytes()
    assert ArenaStore(legacy).votes() == [old]  # opened again: nothing hashed twice


def test_arena_config_file():
    from ray.serve.deployment import Application
    from ray.serve.schema import ServeDeploySchema

    from serving.arena.app import build_app

    data = yaml.safe_load(CONFIG.read_text())
    ServeDeploySchema.model_validate(data)  # what `serve run` takes
    arena_args = next(app["args"] for app in data["applications"] if app["name"] == "arena")
    assert isinstance(build_app(arena_args), Application)  # `serve run`'s builder, without Ray
    served = load_arena_file(CONFIG)
    assert served.arena.route_prefix == "/arena" and served.generation.route_prefix == "/"
    assert served.arena.settings.model_names == MODELS
    assert pathlib.Path(served.arena.settings.prompts_file).is_file()
    assert pathlib.Path(served.arena.settings.database).is_absolute()
    assert served.arena.deployment_options["ArenaIngress"]["num_replicas"] == 1
    with pytest.raises(ConfigError, match=r"models.*unique.*tiny-seed0"):
        load_arena_file(CONFIG, ["models=[{name: tiny-seed0}, {name: tiny-seed0, seed: 1}]"])
    with pytest.raises(ConfigError, match=r"rating\.k_factr"):
        load_arena_file(CONFIG, ["rating.k_factr=16"])
    with pytest.raises(ConfigError, match=r"rating\.both_bad"):
        load_arena_file(CONFIG, ["rating.both_bad=loss"])
