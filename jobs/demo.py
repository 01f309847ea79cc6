"""The built-in demo: the platform end to end on a synthetic corpus and the tiny preset.

    python jobs/demo.py                       # outputs/demo/: curated corpus, funnel.html, samples.png
    python jobs/demo.py num_samples=128 generation.num_steps=30

1. Producers: a synthetic corpus of image-text pairs (with the defects the filters exist for) goes through the
   curation job on a local Ray: every operator once, annotation, global dedup, stages, the funnel report.
2. The model stack: prompts go through the condition encoder (Qwen2.5-VL with the real Qwen2 vocabulary), the
   MMDiT samples with true CFG, the VAE decodes. With the tiny preset the weights are random, so the images are
   structured noise; later stages of the platform (latent store, pretraining) grow this into preprocess -> train
   -> sample.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from models.config import StrictModel, load_config  # noqa: E402
from models.generation import DEFAULT_NEGATIVE_PROMPT, DEFAULT_TRUE_CFG, TextToImage  # noqa: E402
from models.imageio import save_png, to_grid  # noqa: E402


class GenerationConfig(StrictModel):
    preset: str = "tiny"
    weights_dir: str | None = None
    prompts: list[str] = ['A shop sign that reads "Qwen Image" on a red background', "一只在雪地里奔跑的橘猫"]
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT
    height: int = 128
    width: int = 128
    num_steps: int = 20
    true_cfg_scale: float = DEFAULT_TRUE_CFG
    seed: int = 0


class DemoConfig(StrictModel):
    output_dir: str = "outputs/demo"
    num_samples: int = 48  # synthetic corpus size; 0 skips the producer step
    generation: GenerationConfig = GenerationConfig()


def main(argv: list[str] | None = None) -> pathlib.Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML file with DemoConfig keys")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. generation.num_steps=8")
    args = parser.parse_args(argv)
    config = load_config(DemoConfig, args.config, args.overrides)
    output = pathlib.Path(config.output_dir)
    started = time.perf_counter()

    if config.num_samples > 0:
        from jobs.preprocess import main as preprocess

        print(f"[demo] 1/2 curating a synthetic corpus of {config.num_samples} samples", flush=True)
        preprocess(["--sample", str(config.num_samples), f"output_dir={output / 'curated'}", "overwrite=true"])

    gen = config.generation
    print(f"[demo] 2/2 generating {len(gen.prompts)} images with preset {gen.preset!r}", flush=True)
    generator = TextToImage.from_preset(gen.preset, weights_dir=gen.weights_dir)
    images = generator(
        gen.prompts,
        height=gen.height,
        width=gen.width,
        num_steps=gen.num_steps,
        true_cfg_scale=gen.true_cfg_scale,
        negative_prompt=gen.negative_prompt,
        seeds=[gen.seed + index for index in range(len(gen.prompts))],
        on_step=lambda step, total: print(f"[demo] sampling step {step}/{total}", flush=True),
    )
    path = save_png(to_grid(images, columns=len(images), labels=gen.prompts), output / "samples.png")
    print(
        f"[demo] wrote {path}; funnel report: {output / 'curated' / 'funnel.html'} "
        f"({time.perf_counter() - started:.0f}s)",
        flush=True,
    )
    return path


if __name__ == "__main__":
    main()
