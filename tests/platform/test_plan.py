"""jobs/plan.py: pool sizes from benchmark output files (progress lines, then one JSON object)."""

from __future__ import annotations

import json

import pytest

from jobs.plan import main


def _bench(folder, name: str, result: dict):
    path = folder / f"{name}.txt"
    path.write_text(f"round 1: warming up\n{json.dumps(result)}\n")
    return str(path)


def test_plan_sizes_every_pool(tmp_path, capsys):
    files = [
        "--producer-cpu",
        _bench(tmp_path, "producer_cpu", {"pipeline_ips_per_core": 100.0}),
        "--encode",
        _bench(tmp_path, "encode", {"vae_batched_sps": 10.0, "text_batched_sps": 50.0}),
        "--train",
        _bench(tmp_path, "train", {"ray_sps": 10.0}),
    ]
    args = [*files, "--target-sps", "100", "--epochs", "2", "--keep-fraction", "0.5", "--headroom", "1"]
    plan = main([*args, "--cpus-per-node", "4"])
    # 100 /s trained over 2 epochs: 50 /s stored, from 100 /s scored.
    assert (plan["stored_sps"], plan["input_sps"]) == (50, 100)
    assert (plan["cpu_pool"], plan["encode.vae_pool"], plan["encode.text_pool"], plan["num_workers"]) == (1, 5, 1, 10)
    assert plan["nodes"] == {"producer-cpu": 2, "producer-gpu": 0, "consumer-gpu": 2}  # 7 CPUs / 4; 10 workers / 8
    assert "cpu_pool.max_size=1 encode.vae_pool.max_size=5" in capsys.readouterr().out
    on_gpus = main([*args, "--encode-per", "gpu", "--gpus-per-node", "2"])
    assert on_gpus["nodes"] == {"producer-cpu": 1, "producer-gpu": 3, "consumer-gpu": 5}


def test_plan_rejects_output_without_json(tmp_path):
    (tmp_path / "partial.txt").write_text("round 1: killed before the result\n")
    partial = str(tmp_path / "partial.txt")
    with pytest.raises(ValueError, match="last line"):
        main(["--producer-cpu", partial, "--encode", partial, "--train", partial, "--target-sps", "1"])


def test_plan_sizes_serving_replicas(tmp_path, capsys):
    """Serving: each profile's memory plan on the given GPU and, from a benchmark's seconds per image in that
    placement, the replicas and GPUs for a target rate."""
    bench = _bench(
        tmp_path,
        "serve_real",
        {"ours_s": 30.0, "profiles": {"resident": {"est_image_s": 30.0}, "two_gpus": {"est_image_s": 31.0}}},
    )
    configs = ["configs/serve_qwen_image_80gb.yaml", "configs/serve_qwen_image_2gpu.yaml"]
    args = [arg for config in configs for arg in ("--serve-config", config)]
    plan = main([*args, "--serve-gpu-gib", "79", "--serve-bench", bench, "--target-ips", "0.5", "--headroom", "1"])
    resident, split = (plan["serving"][config] for config in configs)
    assert resident["fits"] and split["fits"]
    assert (resident["replicas"], resident["gpus"]) == (15, 15)  # 0.5 images/s x 30 s
    assert (split["replicas"], split["gpus"]) == (16, 32)  # ceil(0.5 x 31), two GPUs each
    assert "training" not in capsys.readouterr().out
    small = main([*args, "--serve-gpu-gib", "44"])["serving"]
    assert not small[configs[0]]["fits"] and small[configs[1]]["fits"]  # 60.5 GiB resident; 42.5 on the second GPU
