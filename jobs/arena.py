"""Arena job: the pairwise-vote arena (and the generation API beside it) on Ray Serve, from one Serve config file.

    python jobs/arena.py                                             # configs/arena_tiny.yaml: / and /arena
    python jobs/arena.py --port 8080 --database /data/arena.sqlite generation.num_inference_steps=8
    python jobs/arena.py --no-generation 'models=[{name: base, preset: tiny}, {name: sft, checkpoint: <folder>}]'

Connects to ``RAY_ADDRESS`` when set, else starts a local Ray; prints the stages as they finish and the URLs, then
(checking every 30 s) the number of votes and the current leader whenever they change, until Ctrl-C. ``key=value`` overrides change
the arena's ``args`` (``serving.arena.config.ArenaSettings``). ``serve run configs/arena_tiny.yaml`` runs the same.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time
import urllib.request

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from ray import serve  # noqa: E402

from models.ray_runtime import init_ray  # noqa: E402
from serving.arena.app import deploy  # noqa: E402
from serving.arena.config import load_arena_file, resolve  # noqa: E402

DEFAULT_CONFIG = pathlib.Path(__file__).resolve().parents[1] / "configs" / "arena_tiny.yaml"


def log(message: str, start: float) -> None:
    print(f"[arena {time.monotonic() - start:6.1f}s] {message}", flush=True)


def main(argv: list[str] | None = None) -> dict[str, str]:
    """Deploy and return the URLs by application (``arena``, ``generation``); Serve keeps running."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="Serve config file (configs/arena_*.yaml)")
    parser.add_argument("--database", help="SQLite file for rounds and votes (relative: from this directory)")
    parser.add_argument("--host", help="HTTP host (the config's http_options.host by default)")
    parser.add_argument("--port", type=int, help="HTTP port (the config's http_options.port by default)")
    parser.add_argument("--no-generation", action="store_true", help="deploy the arena only, not the generation API")
    parser.add_argument("overrides", nargs="*", help="key=value changes to the arena's args")
    args = parser.parse_args(argv)

    start = time.monotonic()
    overrides = list(args.overrides)
    if args.database:
        overrides.append(f"database={resolve(args.database, pathlib.Path.cwd())}")
    served = load_arena_file(args.config, overrides)
    for key, value in (("host", args.host), ("port", args.port)):
        if value:
            served.http_options[key] = value
    settings = served.arena.settings
    log(f"{len(settings.models)} models: {', '.join(settings.model_names)}; votes in {settings.database}", start)
    resources = init_ray()
    log(
        f"Ray up ({resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs); deploying (loads every model)",
        start,
    )
    urls = deploy(served, with_generation=not args.no_generation)
    if "generation" in urls:
        log(f"generation API at {urls['generation']}/v1/images/generations, its page at {urls['generation']}/", start)
    log(f"arena ready: vote at {urls['arena']}/, leaderboard at {urls['arena']}/leaderboard.html", start)
    return urls


def report(url: str, every_s: float) -> None:
    """Print the vote count and the leader whenever the votes change, until Ctrl-C."""
    start, seen = time.monotonic(), None
    while True:
        with urllib.request.urlopen(f"{url}/leaderboard", timeout=60) as response:
            board = json.load(response)
        if board["num_votes"] != seen:
            seen = board["num_votes"]
            leader = board["models"][0]
            log(
                f"{seen} votes, {board['num_rounds']} rounds; leader {leader['name']} ({leader['bt_rating']:.0f})",
                start,
            )
        time.sleep(every_s)


if __name__ == "__main__":
    urls = main()
    try:
        report(urls["arena"], every_s=30.0)
    except KeyboardInterrupt:
        serve.shutdown()
