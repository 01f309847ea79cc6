"""The built-in demo: the platform end to end on shape scenes, ending with a model that draws what it is asked.

    python jobs/demo.py                          # everything under outputs/demo/
    python jobs/demo.py num_scenes=1000 pretrain_steps=400

1. Producers (``jobs/preprocess.py``): a corpus of shape scenes with exact captions (``pipelines/synth/shapes.py``),
   one in ten damaged the way crawled data is (duplicate, blurred, dark, tiny, truncated, a refusal for a caption),
   goes through curation (every operator, dedup, stages, funnel report); the kept samples are encoded into the latent
   store with the nano preset at 64 px. No scene holds a held-out colour-shape pair (green triangle, purple circle,
   orange star, blue square).
2. The nano VAE: the one shipped in ``models/weights/nano_vae``; where it is missing, ``jobs/train_vae.py`` trains it
   first (about 45 minutes here; the result is cached under ``outputs/``).
3. Consumers (``jobs/pretrain.py``): flow-matching pretraining of the nano MMDiT on Ray Train from the store.
4. Evaluation (``jobs/evaluate.py``): the untrained and the trained model draw prompts of held-out pairs; the judge
   (``training/evaluation/judge.py``) reads colour, shape, position and count from the pixels. A grid shows each
   image with its prompt and verdict; the table compares the two models with the reference renderer.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from models.config import StrictModel, load_config  # noqa: E402
from models.host import cpu_shares, cpu_times  # noqa: E402
from models.presets import NANO_VAE_ENV, nano_vae_folder  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]


class DemoConfig(StrictModel):
    output_dir: str = "outputs/demo"
    num_scenes: int = 800  # scenes written to the corpus, defects included
    scene_kinds: list[str] = ["one"]
    curation_recipe: str = str(ROOT / "configs" / "preprocess_scenes.yaml")
    vae_recipe: str = str(ROOT / "configs" / "train_vae_nano.yaml")  # used only when no nano VAE is found
    pretrain_recipe: str = str(ROOT / "configs" / "pretrain_nano.yaml")
    pretrain_steps: int | None = None  # None: the recipe's steps
    eval_recipe: str = str(ROOT / "configs" / "evaluate_nano.yaml")
    num_prompts: int | None = None  # held-out prompts judged; None: the evaluation recipe's


def ensure_nano_vae(output: pathlib.Path, recipe: str) -> pathlib.Path:
    """The nano VAE's folder: the shipped one, else one trained here once (cached in ``output``); the jobs this
    process starts read it through ``$QWEN_IMAGE_NANO_VAE``."""
    if (nano_vae_folder() / "config.json").is_file():
        return nano_vae_folder()
    cached = sorted((output / "nano_vae").glob("*/exports/*-vae/vae/config.json"))
    if not cached:
        from jobs.train_vae import main as train_vae

        print(f"[demo] no nano VAE in {nano_vae_folder()}: training one with {recipe} (first run only)", flush=True)
        summary = train_vae(["--config", recipe, f"output_dir={output / 'nano_vae'}"])
        cached = [pathlib.Path(summary["checkpoint"]) / "vae" / "config.json"]
    os.environ[NANO_VAE_ENV] = str(cached[-1].parent)
    return cached[-1].parent


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML file with DemoConfig keys")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. pretrain_steps=50")
    args = parser.parse_args(argv)
    config = load_config(DemoConfig, args.config, args.overrides)
    output = pathlib.Path(config.output_dir).resolve()
    started, started_cpu = time.perf_counter(), cpu_times()
    minutes, steal = {}, {}
    part_cpu = started_cpu

    def lap(name: str, since: float) -> None:
        # Wall minutes of the part, and the share of the machine's CPU time the hypervisor took meanwhile (steal):
        # on a shared virtual machine the same part has taken half as long again when it was high (models/host.py).
        nonlocal part_cpu
        minutes[name] = round((time.perf_counter() - since) / 60, 2)
        now = cpu_times()
        steal[name] = cpu_shares(part_cpu, now).get("steal")
        part_cpu = now

    # Before any Ray starts: Ray's workers inherit this process's environment (the VAE folder).
    since = time.perf_counter()
    vae_folder = ensure_nano_vae(output, config.vae_recipe)
    lap("vae", since)

    from jobs.evaluate import main as evaluate
    from jobs.preprocess import main as preprocess
    from jobs.pretrain import main as pretrain

    print(
        f"[demo] 1/3 producers: {config.num_scenes} shape scenes (one in ten damaged) -> curation -> latent store "
        f"(nano VAE: {vae_folder})",
        flush=True,
    )
    since = time.perf_counter()
    preprocess(
        [
            "--config",
            config.curation_recipe,
            "--scenes",
            str(config.num_scenes),
            "--scene-kinds",
            ",".join(config.scene_kinds),
            f"output_dir={output / 'curated'}",
            f"encode.store_dir={output / 'store'}",
        ]
        # Shapes without words hold no text to read: OCR, the producers' slowest operator, is switched off and the
        # funnel says so (stage 4's text checks left out; the store keeps stages 1-3 either way).
        + ([] if "word" in config.scene_kinds else ["ocr.enabled=false"])
    )
    lap("producers", since)

    print("[demo] 2/3 consumers: pretraining the nano MMDiT on Ray Train", flush=True)
    since = time.perf_counter()
    summary = pretrain(
        ["--config", config.pretrain_recipe, f"store_dir={output / 'store'}", f"output_dir={output / 'pretrain'}"]
        + (["--max-steps", str(config.pretrain_steps)] if config.pretrain_steps else [])
    )
    lap("pretraining", since)

    print("[demo] 3/3 evaluation: the judge on prompts of held-out colour-shape pairs", flush=True)
    since = time.perf_counter()
    models = [
        {"name": "reference-render", "reference": True},
        {"name": "untrained", "preset": "nano"},
        {"name": "trained", "preset": "nano", "checkpoint": summary["checkpoint"]},
    ]
    evaluated = evaluate(
        ["--config", config.eval_recipe, f"output_dir={output / 'evaluate'}", f"models={json.dumps(models)}"]
        + ([f"scenes.num_prompts={config.num_prompts}"] if config.num_prompts else [])
    )
    lap("evaluation", since)
    results = json.loads(pathlib.Path(evaluated["results"]).read_text())
    scenes = {name: result["scenes"] for name, result in results.items()}
    grid = output / "scenes.png"
    shutil.copyfile(scenes["trained"]["grid"], grid)
    minutes["total"] = round((time.perf_counter() - started) / 60, 2)
    steal["total"] = cpu_shares(started_cpu, cpu_times()).get("steal")
    report = {
        "minutes": minutes,
        "cpu_steal": steal,
        "judge": {
            name: {key: value for key, value in result.items() if key != "grid"} for name, result in scenes.items()
        },
        "checkpoint": summary["checkpoint"],
        "grid": str(grid),
        "table": evaluated["table"],
    }
    (output / "demo.json").write_text(json.dumps(report, indent=2))
    print(
        f"[demo] done in {minutes['total']:.1f} min ({minutes}; CPU time stolen by the hypervisor: {steal})\n"
        f"  funnel report:   {output / 'curated' / 'funnel.html'}\n"
        f"  latent store:    {output / 'store'}\n"
        f"  loss curve:      {summary['loss_curve']}\n"
        f"  checkpoint:      {summary['checkpoint']}\n"
        f"  judged samples:  {grid}  (each held-out prompt, its image and the judge's verdict)\n"
        f"  table:           {evaluated['table']}\n"
        f"  summary:         {output / 'demo.json'}",
        flush=True,
    )
    return report


if __name__ == "__main__":
    main()
