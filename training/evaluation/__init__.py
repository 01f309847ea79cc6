"""Evaluation in the paper's terms (docs/qwen_image.md §9), distributed with Ray Data; run by ``jobs/evaluate.py``.

- ``images``: text-rich renders, ordinary images, a given text drawn plainly;
- ``config``: ``EvaluateConfig`` (models to compare, task sizes, pools);
- ``text_accuracy``: ChineseWord-style character prompts per tier, LongText-style English / Chinese prompts, scoring;
- ``stages``: the Ray Data stages (render, VAE reconstruction, generation, OCR, CLIP score, PNG encoding);
- ``run``: the two pipelines per model (VAE reconstruction, generation) written as Parquet rows;
- ``report``: per-model JSON, the markdown comparison table, image grids and the per-tier bar chart.
"""
