"""The built-in demo: generate images with the tiny preset through the whole model stack and write a PNG.

    python jobs/demo.py                                   # tiny preset, outputs/demo.png
    python jobs/demo.py --config my.yaml num_steps=30 'prompts=["a red fox"]'

Prompts go through the condition encoder (Qwen2.5-VL with the real Qwen2 vocabulary), the MMDiT samples with true
CFG, the VAE decodes. With the tiny preset the weights are random, so the image is noise with structure: the demo
proves the stack runs end to end; later issues grow it into preprocess -> train -> sample.
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


class DemoConfig(StrictModel):
    preset: str = "tiny"
    weights_dir: str | None = None
    prompts: list[str] = ['A shop sign that reads "Qwen Image" on a red background', "一只在雪地里奔跑的橘猫"]
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT
    height: int = 128
    width: int = 128
    num_steps: int = 20
    true_cfg_scale: float = DEFAULT_TRUE_CFG
    seed: int = 0
    output: str = "outputs/demo.png"


def main(argv: list[str] | None = None) -> pathlib.Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML file with DemoConfig keys")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. num_steps=8")
    args = parser.parse_args(argv)
    config = load_config(DemoConfig, args.config, args.overrides)

    started = time.perf_counter()
    generator = TextToImage.from_preset(config.preset, weights_dir=config.weights_dir)
    print(f"[demo] loaded preset {config.preset!r} in {time.perf_counter() - started:.1f}s", flush=True)

    def on_step(step: int, total: int) -> None:
        print(f"[demo] sampling step {step}/{total}", flush=True)

    images = generator(
        config.prompts,
        height=config.height,
        width=config.width,
        num_steps=config.num_steps,
        true_cfg_scale=config.true_cfg_scale,
        negative_prompt=config.negative_prompt,
        seeds=[config.seed + index for index in range(len(config.prompts))],
        on_step=on_step,
    )
    path = save_png(to_grid(images, columns=len(images), labels=config.prompts), config.output)
    print(
        f"[demo] wrote {path} ({len(images)} images, {config.height}x{config.width}) "
        f"in {time.perf_counter() - started:.1f}s",
        flush=True,
    )
    return path


if __name__ == "__main__":
    main()
