"""Producer job: curate image-text pairs (every operator once, annotation, global dedup, stages, funnel report).

    python jobs/preprocess.py --config configs/preprocess.yaml
    python jobs/preprocess.py output_dir=outputs/curated 'sources=[{kind: webdataset, paths: ["data/*.tar"]}]'
    python jobs/preprocess.py --sample 64 output_dir=outputs/curated      # built-in synthetic corpus
    RAY_ADDRESS=auto python jobs/preprocess.py --config ... cpu_pool.max_size=64 clip.pool.num_gpus=0.25
    python jobs/preprocess.py --sample 64 output_dir=outputs/curated encode.store_dir=outputs/store   # + latents
    python jobs/preprocess.py --sample 64 synthetic_ratio=0.25 ...     # + synthetic text rendering, 1 per 4 real
    python jobs/preprocess.py --synth-preview 12 output_dir=outputs/curated        # contact sheets per mode
    python jobs/preprocess.py --scenes 2000 output_dir=outputs/curated 'encode.caption_weights={raw: 1}' ...
                                      # shape scenes (training split, with defects) for the nano model

Writes ``<output_dir>/scored/*.parquet`` (every input row with every score), ``labels.parquet`` (stage, drop
reason) and ``funnel.html`` / ``funnel.json`` / ``funnel/*.png``; with ``encode.store_dir`` the kept samples are
encoded into the latent store. Re-running resumes: a complete scoring pass is kept and stored samples are skipped.
Re-applying new thresholds to the stored scores: ``--relabel-only``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from models.config import load_config, parse_overrides  # noqa: E402
from models.ray_runtime import init_ray  # noqa: E402
from pipelines.curation import CurationConfig, relabel, run_curation  # noqa: E402
from pipelines.synth.sample_corpus import write_sample_corpus  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML file with CurationConfig keys")
    parser.add_argument("--sample", type=int, metavar="N", help="curate a built-in synthetic corpus of N samples")
    parser.add_argument(
        "--scenes", type=int, metavar="N", help="curate N shape scenes (pipelines/synth/shapes.py, training split)"
    )
    parser.add_argument("--scene-kinds", default="one,two", help="scene kinds for --scenes: one, two, word")
    parser.add_argument("--scene-size", type=int, default=256, help="side of the rendered scenes, pixels")
    parser.add_argument("--limit", type=int, metavar="N", help="smoke run: the first N input samples only")
    parser.add_argument("--relabel-only", action="store_true", help="re-apply thresholds to stored scores only")
    parser.add_argument(
        "--synth-preview",
        type=int,
        metavar="N",
        help="write a contact sheet of N synthetic "
        "text-rendering samples per mode to <output_dir>/synth_preview/ and exit",
    )
    parser.add_argument("overrides", nargs="*", help="key=value overrides (dotted keys for sections)")
    args = parser.parse_args(argv)

    overrides = list(args.overrides)
    if args.sample:
        output_dir = parse_overrides(overrides).get("output_dir", "outputs/curated")
        shards = write_sample_corpus(pathlib.Path(output_dir) / "sample_corpus", args.sample)
        overrides.append(f"sources={json.dumps([{'name': 'sample', 'kind': 'webdataset', 'paths': shards}])}")
    if args.scenes:
        from pipelines.synth.scene_corpus import write_scene_corpus

        output_dir = parse_overrides(overrides).get("output_dir", "outputs/curated")
        shards = write_scene_corpus(
            pathlib.Path(output_dir) / "scene_corpus",
            args.scenes,
            kinds=tuple(args.scene_kinds.split(",")),
            size=args.scene_size,
        )
        overrides.append(f"sources={json.dumps([{'name': 'scenes', 'kind': 'webdataset', 'paths': shards}])}")
    if args.limit:
        overrides.append(f"limit={args.limit}")
    config = load_config(CurationConfig, args.config, overrides)

    if args.synth_preview:
        from pipelines.synth.preview import write_preview

        paths = write_preview(config.synth, args.synth_preview, pathlib.Path(config.output_dir) / "synth_preview")
        print("[preprocess] synthetic previews: " + ", ".join(str(p) for p in paths), flush=True)
        return {"previews": [str(p) for p in paths]}
    if args.relabel_only:
        funnel = relabel(config.output_dir, config)
    else:
        init_ray()
        result = run_curation(config)
        funnel = result.funnel
        if config.encode.store_dir:
            print(f"[preprocess] encoded {result.num_encoded} samples into {config.encode.store_dir}", flush=True)
    print(
        f"[preprocess] {funnel['num_input']} samples, {funnel['num_kept_all_stages']} pass all stages; "
        f"survivors per stage {funnel['survivors_per_stage']}; report: {config.output_dir}/funnel.html",
        flush=True,
    )
    return funnel


if __name__ == "__main__":
    main()
