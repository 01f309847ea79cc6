"""The arena: pairwise human evaluation of registered models with Elo and Bradley-Terry ratings, on Ray Serve.

A round shows one prompt drawn by two models picked at random, without names and in random order; the voter picks
left, right, tie or both bad. Rounds and votes live in SQLite (``store``); ratings are pure functions of the votes
(``ratings``); ``app`` holds the Serve deployments and the FastAPI routes, ``page`` and ``chart`` the HTML and SVG.

    serve run configs/arena_tiny.yaml        # the generation API at /, the arena at /arena
    python jobs/arena.py                     # the same file; prints the URLs and the votes as they come in
"""
