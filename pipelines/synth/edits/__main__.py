"""``python -m pipelines.synth.edits``: a preview grid of generated triplets (``source.main``)."""

from pipelines.synth.edits.source import main

main()
