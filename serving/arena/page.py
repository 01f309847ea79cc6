"""The arena's HTML: the voting page (``/arena/``) and the leaderboard page (``/arena/leaderboard.html``).

The voting page is static HTML plus a little JavaScript that calls the JSON API like any client: ``POST rounds``
for two anonymous images, ``POST rounds/{id}/vote`` with the choice; the models' names are shown only once the
vote is in. When the arena has a key the page shows a field for it and sends it with each call (it keeps it
nowhere else). The leaderboard page is rendered on the server (table and inline SVG charts), so it needs no script
and nothing from the internet.
"""

from __future__ import annotations

import html
import json
import re

_STYLE = """
  body { font-family: sans-serif; max-width: 60rem; margin: 1.5rem auto; padding: 0 1rem; color: #222; }
  nav a { margin-right: 1rem; }
  .error { color: #b00020; }
  #status { color: #555; min-height: 1.5rem; }
  #status.error { color: #b00020; }
  .pair { display: flex; gap: 1.5rem; flex-wrap: wrap; }
  figure { margin: 0; text-align: center; }
  figure img { display: block; width: 20rem; height: 20rem; object-fit: contain; background: #eee;
    image-rendering: pixelated; }
  figcaption { margin-top: 0.3rem; font-weight: bold; min-height: 1.2rem; }
  #choices button { font-size: 1.05rem; padding: 0.4rem 1.2rem; margin: 0.8rem 0.6rem 0 0; }
  #prompt { width: 30rem; }
  table { border-collapse: collapse; margin: 1rem 0; }
  th, td { border-bottom: 1px solid #ddd; padding: 0.35rem 0.8rem; text-align: right; }
  th:nth-child(2), td:nth-child(2) { text-align: left; }
  svg { display: block; margin: 1rem 0; }
"""

_ARENA = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>__TITLE__</title>
<style>__STYLE__</style>
</head>
<body>
<h1>__TITLE__</h1>
<nav><a href="__HREF__/leaderboard.html">leaderboard</a><a href="__HREF__/votes.csv">votes (CSV)</a></nav>
<p>Two anonymous models draw the same prompt from the same seed. Which image is better?</p>
<form id="round-form">
  <input id="prompt" maxlength="__MAX_CHARS__" placeholder="type a prompt, or leave empty for one from the list">
  <input id="key" type="password" placeholder="arena key" autocomplete="off"__KEY_HIDDEN__>
  <button id="new-round" type="submit">new round</button>
</form>
<p>Prompt: <q id="round-prompt"></q></p>
<div class="pair">
  <figure><img id="left-image" alt=""><figcaption id="left-name"></figcaption></figure>
  <figure><img id="right-image" alt=""><figcaption id="right-name"></figcaption></figure>
</div>
<div id="choices">
  <button id="vote-left" data-choice="left" disabled>left</button>
  <button id="vote-right" data-choice="right" disabled>right</button>
  <button id="vote-tie" data-choice="tie" disabled>tie</button>
  <button id="vote-both_bad" data-choice="both_bad" disabled>both bad</button>
</div>
<p id="status"></p>
<script>
const ROOT = __ROOT__;
const status = document.getElementById("status");
const buttons = Array.from(document.querySelectorAll("#choices button"));
const keyField = document.getElementById("key");
let roundId = null;

function say(text, isError) {
  status.className = isError ? "error" : "";
  status.textContent = text;
}

async function call(path, body) {
  const headers = {"Content-Type": "application/json"};
  if (keyField.value) headers["Authorization"] = "Bearer " + keyField.value;
  const response = await fetch(ROOT + path, {method: "POST", headers, body: JSON.stringify(body)});
  const answer = await response.json();
  if (!response.ok) throw new Error(answer.error ? answer.error.message : response.statusText);
  return answer;
}

async function newRound() {
  buttons.forEach((button) => { button.disabled = true; });
  roundId = null;
  document.body.dataset.round = "";
  for (const side of ["left", "right"]) {
    document.getElementById(side + "-image").removeAttribute("src");
    document.getElementById(side + "-name").textContent = "";
  }
  say("generating both images...", false);
  const prompt = document.getElementById("prompt").value.trim();
  try {
    const round = await call("/rounds", prompt ? {prompt} : {});
    document.getElementById("left-image").src = "data:image/png;base64," + round.images.left;
    document.getElementById("right-image").src = "data:image/png;base64," + round.images.right;
    document.getElementById("round-prompt").textContent = round.prompt;
    roundId = round.round_id;
    document.body.dataset.round = roundId;
    buttons.forEach((button) => { button.disabled = false; });
    say("Which image is better?", false);
  } catch (error) {
    say(error.message, true);
  }
}

async function vote(choice) {
  if (!roundId) return;
  buttons.forEach((button) => { button.disabled = true; });
  try {
    const answer = await call("/rounds/" + encodeURIComponent(roundId) + "/vote", {choice});
    document.getElementById("left-name").textContent = answer.models.left;
    document.getElementById("right-name").textContent = answer.models.right;
    say("vote recorded: " + choice.replace("_", " ") + ". Press 'new round' for another pair.", false);
    document.body.dataset.voted = roundId;
  } catch (error) {
    say(error.message, true);
  }
}

buttons.forEach((button) => button.addEventListener("click", () => vote(button.dataset.choice)));
document.getElementById("round-form").addEventListener("submit", (event) => { event.preventDefault(); newRound(); });
if (keyField.hidden) newRound(); else say("This arena needs a key: type it, then press 'new round'.", false);
</script>
</body>
</html>
"""

_LEADERBOARD = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>__TITLE__: leaderboard</title>
<style>__STYLE__</style>
</head>
<body>
<h1>__TITLE__: leaderboard</h1>
<nav><a href="__HREF__/">vote</a><a href="__HREF__/leaderboard">JSON</a><a href="__HREF__/votes.csv">votes (CSV)</a></nav>
<p id="summary">__SUMMARY__</p>
<table id="leaderboard">
<thead><tr><th>rank</th><th>model</th><th>Bradley-Terry</th><th>__CONFIDENCE__ interval</th><th>Elo</th>
<th>votes</th><th>wins</th><th>losses</th><th>ties</th><th>both bad</th></tr></thead>
<tbody>
__ROWS__
</tbody>
</table>
__CHARTS__
<p>__NOTE__</p>
</body>
</html>
"""


def _fill(page: str, values: dict[str, str]) -> str:
    """Every ``__NAME__`` placeholder replaced in one pass (a value holding a placeholder's name stays as it is)."""
    return re.sub(r"__[A-Z_]+__", lambda match: values.get(match.group(0), match.group(0)), page)


def render_arena_page(*, title: str, root_path: str, max_prompt_chars: int, needs_key: bool = False) -> str:
    """The voting page, calling the API under ``root_path`` (the arena's route prefix); with ``needs_key`` it has a
    field for the arena's key, sent with each round and vote."""
    root = root_path.rstrip("/")
    return _fill(
        _ARENA,
        {
            "__TITLE__": html.escape(title),
            "__STYLE__": _STYLE,
            "__HREF__": html.escape(root),
            # A JavaScript string literal; "<" escaped so that no prefix can close the script element.
            "__ROOT__": json.dumps(root).replace("<", "\\u003c"),
            "__MAX_CHARS__": str(max_prompt_chars),
            "__KEY_HIDDEN__": "" if needs_key else " hidden",
        },
    )


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def render_leaderboard_page(*, title: str, root_path: str, board: dict, charts: list[str]) -> str:
    """The leaderboard: ``board`` is the ``GET leaderboard`` JSON, ``charts`` inline SVG documents."""
    rating = board["rating"]
    rows = []
    for entry in board["models"]:
        interval = "" if entry["ci_low"] is None else f"{_number(entry['ci_low'])} to {_number(entry['ci_high'])}"
        cells = [
            str(entry["rank"]),
            html.escape(entry["name"]),
            _number(entry["bt_rating"]),
            interval,
            _number(entry["elo"]),
            *(str(entry[key]) for key in ("num_votes", "wins", "losses", "ties", "both_bad")),
        ]
        rows.append(
            f'<tr data-model="{html.escape(entry["name"])}">' + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"
        )
    both_bad = "rated as a tie" if rating["both_bad"] == "tie" else "counted but not rated"
    note = (
        f"Bradley-Terry ratings are fitted to all votes (ties as half a win each, {rating['prior_ties']:g} virtual "
        f"tie per pair), on the Elo scale with mean {rating['initial_rating']:g}; intervals from "
        f"{rating['num_bootstrap']} bootstrap resamples of the votes. Elo applies each vote in the order cast "
        f"(K = {rating['k_factor']:g}, start {rating['initial_rating']:g}). 'Both bad' is {both_bad}."
    )
    summary = f"{board['num_votes']} votes over {board['num_rounds']} rounds, {len(board['models'])} models."
    return _fill(
        _LEADERBOARD,
        {
            "__TITLE__": html.escape(title),
            "__STYLE__": _STYLE,
            "__HREF__": html.escape(root_path.rstrip("/")),
            "__SUMMARY__": html.escape(summary),
            "__CONFIDENCE__": f"{100 * rating['confidence']:g}%",
            "__ROWS__": "\n".join(rows),
            "__CHARTS__": "\n".join(charts),
            "__NOTE__": html.escape(note),
        },
    )
