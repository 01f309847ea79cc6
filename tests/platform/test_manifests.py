"""platform/ and docker/ agree with the project: pins, image tags, node-group resources, entry points, import paths."""

from __future__ import annotations

import importlib
import pathlib
import re
import shlex
import subprocess
import sys
import tomllib
from subprocess import PIPE

import yaml

from models.config import load_config
from pipelines.curation import CurationConfig
from pipelines.pools import PoolConfig
from serving.config import parse_settings
from tests.platform.kube import operator_resources
from training.config import PretrainConfig

ROOT = pathlib.Path(__file__).resolve().parents[2]
PLATFORM, DOCKER = ROOT / "platform", ROOT / "docker"
BUILTIN = {"CPU", "GPU", "memory", "object_store_memory"}


def pins() -> dict[str, str]:
    """Versions from pyproject.toml, the one place they are written."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pinned = dict(
        re.match(r"([\w-]+)(?:\[[^]]*\])?==(\S+)", dep).groups() for dep in project["dependencies"] if "==" in dep
    )
    python = re.search(r">=(\d+)\.(\d+)", project["requires-python"]).groups()
    return {"project": project["version"], "ray": pinned["ray"], "torch": pinned["torch"], "py": "py" + "".join(python)}


def kuberay_groups(cluster_spec: dict) -> dict[str, dict]:
    """Worker groups of a RayCluster spec: custom resources from rayStartParams, GPUs and image from the pod."""
    groups = {}
    for group in cluster_spec["workerGroupSpecs"]:
        container = group["template"]["spec"]["containers"][0]
        groups[group["groupName"]] = {
            "resources": set(operator_resources(group["rayStartParams"])),  # as KubeRay parses them
            "gpu": int(container["resources"]["limits"].get("nvidia.com/gpu", 0)),
            "image": container["image"],
            "bounds": (group["minReplicas"], group["maxReplicas"]),
        }
    return groups


def launcher_groups(cluster: dict) -> dict[str, dict]:
    groups = {}
    for name, node in cluster["available_node_types"].items():
        if name == cluster["head_node_type"]:
            continue
        groups[name] = {
            "resources": set(node["resources"]) - BUILTIN,
            "gpu": node["resources"].get("GPU", 0),
            "image": node.get("docker", {}).get("worker_image", cluster["docker"]["worker_image"]),
            "bounds": (node["min_workers"], node["max_workers"]),
        }
    return groups


def all_pools(model, prefix: str = "") -> dict[str, PoolConfig]:
    pools = {}
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, PoolConfig):
            pools[prefix + name] = value
        elif hasattr(type(value), "model_fields"):
            pools.update(all_pools(value, f"{prefix}{name}."))
    return pools


def entrypoint(job_file: str, app_dir: str) -> tuple[pathlib.Path, list[str]]:
    """The job script a RayJob runs (mapped from the image's app folder to this checkout) and its arguments."""
    words = shlex.split(yaml.safe_load((PLATFORM / "kuberay" / job_file).read_text())["spec"]["entrypoint"])
    assert words[0] == "python" and words[1].startswith(app_dir + "/"), words
    local = [w.replace(app_dir, str(ROOT)) for w in words[1:]]
    return pathlib.Path(local[0]), local[1:]


def split_arguments(arguments: list[str]) -> tuple[dict[str, str], list[str]]:
    flags, overrides, index = {}, [], 0
    while index < len(arguments):
        if arguments[index].startswith("--"):
            flags[arguments[index]] = arguments[index + 1]
            index += 2
        else:
            overrides.append(arguments[index])
            index += 1
    return flags, overrides


def test_manifests_are_consistent():
    pinned = pins()
    manifests = {
        path.relative_to(PLATFORM).as_posix(): yaml.safe_load(path.read_text()) for path in PLATFORM.rglob("*.yaml")
    }
    assert set(manifests) >= {
        "cluster.yaml",
        "preprocess.yaml",
        "kuberay/raycluster.yaml",
        "kuberay/rayjob-preprocess.yaml",
        "kuberay/rayjob-pretrain.yaml",
        "kuberay/rayservice.yaml",
    }
    # Images: the project's version on the pinned Ray and Python, CPU or CUDA as the group's GPUs require.
    dockerfiles = {name: (DOCKER / f"{name}.Dockerfile").read_text() for name in ("cpu", "cuda")}
    cuda_tag = re.search(r"ARG CUDA_TAG=(\S+)", dockerfiles["cuda"]).group(1)
    images = {
        "cpu": f"qwen-image-ray:{pinned['project']}-ray{pinned['ray']}-{pinned['py']}-cpu",
        "cuda": f"qwen-image-ray:{pinned['project']}-ray{pinned['ray']}-{pinned['py']}-{cuda_tag}",
    }
    for name, text in dockerfiles.items():
        assert f"ARG RAY_VERSION={pinned['ray']}\n" in text and f"ARG PYTHON_TAG={pinned['py']}\n" in text, name
        assert "FROM rayproject/ray:${RAY_VERSION}-${PYTHON_TAG}-" in text and re.search(r"^USER 1000", text, re.M)
        assert "fonts-noto-cjk" in text and "-c constraints.txt" in text and images[name] in text  # its build command
    assert f"torch=={pinned['torch']} " in dockerfiles["cpu"]
    constraints = (DOCKER / "constraints.txt").read_text().splitlines()
    assert {f"ray=={pinned['ray']}", f"torch=={pinned['torch']}"} <= set(constraints)
    app_dir = re.search(r"^WORKDIR (\S+)", dockerfiles["cuda"], re.M).group(1)

    # Node groups: the launcher and KubeRay define the same groups, resources and autoscaler bounds.
    launcher = manifests["cluster.yaml"]
    raycluster = manifests["kuberay/raycluster.yaml"]
    service = manifests["kuberay/rayservice.yaml"]
    assert raycluster["spec"]["rayVersion"] == service["spec"]["rayClusterConfig"]["rayVersion"] == pinned["ray"]
    groups = launcher_groups(launcher)
    assert groups == kuberay_groups(raycluster["spec"])
    assert launcher["max_workers"] == sum(group["bounds"][1] for group in groups.values())
    heads = [
        launcher["docker"]["head_image"],
        raycluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"],
    ]
    for group in [*groups.values(), *kuberay_groups(service["spec"]["rayClusterConfig"]).values()]:
        assert group["image"].endswith(images["cuda" if group["gpu"] else "cpu"]), group
    assert all(image.endswith(images["cpu"]) for image in heads)
    gpu_resources = set().union(*(g["resources"] for g in groups.values() if g["gpu"]))
    cpu_resources = set().union(*(g["resources"] for g in groups.values() if not g["gpu"]))

    # The producer job: its script and recipe exist; every pool is placed, GPU pools on GPU groups only.
    script, arguments = entrypoint("rayjob-preprocess.yaml", app_dir)
    flags, overrides = split_arguments(arguments)
    curation = load_config(CurationConfig, flags["--config"], overrides)
    for name, pool in all_pools(curation).items():
        assert pool.resources, f"{name} is not placed on a node group"
        assert set(pool.resources) <= (gpu_resources if pool.num_gpus else cpu_resources), name
    # The consumer job: train workers on GPU groups, one GPU each.
    script_pretrain, arguments = entrypoint("rayjob-pretrain.yaml", app_dir)
    flags_pretrain, overrides = split_arguments(arguments)
    pretrain = load_config(PretrainConfig, flags_pretrain["--config"], overrides)
    assert pretrain.use_gpu and pretrain.worker_resources and set(pretrain.worker_resources) <= gpu_resources
    assert (pretrain.parallel.strategy, pretrain.parallel.activation_checkpointing) == ("fsdp", 1)
    # Both jobs' --help at once (each imports the whole stack).
    jobs = ((script, flags), (script_pretrain, flags_pretrain))
    helps = [
        subprocess.Popen([sys.executable, str(job), "--help"], stdout=PIPE, stderr=PIPE, text=True) for job, _ in jobs
    ]
    for usage, (_, job_flags) in zip(helps, jobs, strict=True):
        stdout, stderr = usage.communicate(timeout=120)
        assert usage.returncode == 0 and all(flag in stdout for flag in job_flags), stderr[-2000:]

    # The server: the import path and deployments of configs/serve_tiny.yaml, valid args, GPUs where asked.
    serve = yaml.safe_load(service["spec"]["serveConfigV2"])
    reference = yaml.safe_load((ROOT / "configs" / "serve_tiny.yaml").read_text())["applications"][0]
    (application,) = serve["applications"]
    assert application["import_path"] == reference["import_path"]
    module, attribute = application["import_path"].split(":")
    assert callable(getattr(importlib.import_module(module), attribute))
    assert {d["name"] for d in application["deployments"]} == {d["name"] for d in reference["deployments"]}
    parse_settings(application["args"])
    serve_gpus = max(g["gpu"] for g in kuberay_groups(service["spec"]["rayClusterConfig"]).values())
    assert all(d["ray_actor_options"].get("num_gpus", 0) <= serve_gpus for d in application["deployments"])
