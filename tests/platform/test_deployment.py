"""platform/ as a real deployment reads it: the published schemas (KubeRay's CRDs, the launcher's and Serve's), what
the operator does with rayStartParams, what the code reads (recipes and the store they train on, the serving key),
and the nodes the pods must fit. The rules replicated from Kubernetes and KubeRay are in tests/platform/kube.py."""

from __future__ import annotations

import copy
import inspect
import json
import pathlib
import shlex
from fractions import Fraction

import jsonschema
import pytest
import yaml

from tests.platform import kube
from tests.platform.kube import Machine

ROOT = pathlib.Path(__file__).resolve().parents[2]
PLATFORM = ROOT / "platform"
APP_DIR = "/home/ray/app"  # the images' WORKDIR (docker/*.Dockerfile; test_manifests checks it)

# The machine types platform/cluster.yaml and platform/README.md name, as AWS lists them (vCPUs, GiB, GPUs), with
# the network limits of awslabs/amazon-eks-ami's nodeadm/internal/kubelet/instance-info.jsonl (defaultMaxENIs,
# ipv4AddressesPerInterface) at 81fec2e895854f599974fe4d3d72f61c0a9aaffa.
MACHINES = {
    "m7i.2xlarge": Machine(vcpus=8, memory_gib=32, gpus=0, enis=4, ips_per_eni=15),
    "c7i.8xlarge": Machine(vcpus=32, memory_gib=64, gpus=0, enis=8, ips_per_eni=30),
    "g6.2xlarge": Machine(vcpus=8, memory_gib=32, gpus=1, enis=4, ips_per_eni=15),  # 1 x L4
    "p5.48xlarge": Machine(vcpus=192, memory_gib=2048, gpus=8, enis=2, ips_per_eni=50),  # 8 x H100 80 GB
    "p5.4xlarge": Machine(vcpus=16, memory_gib=256, gpus=1, enis=4, ips_per_eni=30),  # 1 x H100 80 GB
}
# Node pools (the qwen-image.io/pool label every pod template selects) that the launcher does not define.
KUBERNETES_ONLY_POOLS = {"serve-gpu": "p5.4xlarge"}
# What every node keeps for DaemonSet pods besides kube-reserved (kube-proxy, the VPC CNI, the EFS CSI node driver,
# the NVIDIA device plugin, a log and a metrics agent): a budget, stated in platform/README.md.
DAEMONSET_CPUS, DAEMONSET_MIB = Fraction(1, 2), 1024
H100_BYTES = 79 * 2**30  # what an H100 80 GB offers torch (about 79.2 GiB)
MAX_TEXT_TOKENS = 1024  # the longest prompt the condition encoder keeps (jobs/memory_plan.py --text-tokens)


def documents() -> dict[str, list[dict]]:
    return {
        path.relative_to(PLATFORM).as_posix(): [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
        for path in sorted(PLATFORM.rglob("*.yaml"))
    }


def kuberay_manifests() -> dict[str, dict]:
    found = {}
    for name, docs in documents().items():
        for doc in docs:
            if doc.get("kind") in kube.CRD_FILES:
                found[f"{name}:{doc['kind']}/{doc['metadata']['name']}"] = doc
    assert {key.split(":")[1].split("/")[0] for key in found} == {"RayCluster", "RayJob", "RayService"}, found
    return found


def pools() -> dict[str, str]:
    """Node pool (qwen-image.io/pool label) -> machine type: the launcher's node types, and the pools only
    KubeRay uses."""
    launcher = yaml.safe_load((PLATFORM / "cluster.yaml").read_text())
    named = {name: node["node_config"]["InstanceType"] for name, node in launcher["available_node_types"].items()}
    return {**named, **KUBERNETES_ONLY_POOLS}


def job_config(job: dict):
    """(script, --config path, overrides) of a RayJob's entrypoint, mapped from the image's folder to this checkout."""
    words = [word.replace(APP_DIR, str(ROOT)) for word in shlex.split(job["spec"]["entrypoint"])]
    assert words[0] == "python", words
    flags = {words[i]: words[i + 1] for i in range(2, len(words) - 1) if words[i].startswith("--")}
    overrides = [
        word for i, word in enumerate(words[2:], 2) if not word.startswith("--") and not words[i - 1].startswith("--")
    ]
    return pathlib.Path(words[1]).name, flags["--config"], overrides


# --- 1. Published schemas ------------------------------------------------------------------------------------------


def serve_config_problems(service: dict) -> list[str]:
    from ray.serve.schema import ServeDeploySchema

    serve = yaml.safe_load(service["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(serve)
    return kube.undeclared_model_fields(serve, ServeDeploySchema)


def test_manifests_match_published_schemas():
    """Every KubeRay manifest validates against the CRD of its kind (vendored, tests/platform/crds/README.md) with no
    field the CRD does not declare (the API server would drop it without a word) and no CEL rule left unchecked;
    the RayService's Serve config against Ray's ServeDeploySchema, no key unknown to it; the launcher config against
    the ray-schema.json of the installed Ray wheel, with Ray's own defaults and checks (``ray up``'s)."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    manifests = kuberay_manifests()
    for name, manifest in manifests.items():
        assert manifest["apiVersion"] == "ray.io/v1", name
        schema = kube.crd_schema(manifest["kind"])
        assert kube.schema_errors(manifest, schema) == [], name
        assert kube.undeclared_fields(manifest, schema) == [], f"{name}: fields the API server would prune"
        assert kube.cel_rules_reached(manifest, schema) == [], f"{name}: sets fields whose CEL rules are not checked"
        if manifest["kind"] == "RayService":
            assert serve_config_problems(manifest) == [], name

    launcher = yaml.safe_load((PLATFORM / "cluster.yaml").read_text())
    wheel_schema = json.loads(
        (pathlib.Path(inspect.getfile(prepare_config)).parents[1] / "ray-schema.json").read_text()
    )
    jsonschema.Draft7Validator(wheel_schema).validate(launcher)
    validate_config(prepare_config(copy.deepcopy(launcher)))

    # Each check bites: a misspelt or misplaced field is found, not dropped.
    cluster = copy.deepcopy(next(m for m in manifests.values() if m["kind"] == "RayCluster"))
    cluster["spec"]["headGroupSpec"]["rayStartParam"] = {}
    cluster["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resource"] = {}
    schema = kube.crd_schema("RayCluster")
    assert kube.undeclared_fields(cluster, schema) == [
        "spec.headGroupSpec.rayStartParam",
        "spec.workerGroupSpecs[0].template.spec.containers[0].resource",
    ]
    cluster["spec"]["workerGroupSpecs"][0]["maxReplicas"] = "20"
    assert any("maxReplicas" in error for error in kube.schema_errors(cluster, schema))
    service = copy.deepcopy(next(m for m in manifests.values() if m["kind"] == "RayService"))
    serve = yaml.safe_load(service["spec"]["serveConfigV2"])
    serve["applications"][0]["deployments"][0]["max_ongoing_request"] = 4
    service["spec"]["serveConfigV2"] = yaml.safe_dump(serve)
    assert serve_config_problems(service) == ["applications[0].deployments[0].max_ongoing_request"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(wheel_schema).validate({**launcher, "max_worker": 1})


# --- 2. Recipes and their store ------------------------------------------------------------------------------------


def model_widths(preset: str, folders: list[str | None]) -> dict[str, int]:
    """The widths that must agree across the store and the model: text embeddings and latent channels."""
    from diffusers import AutoencoderKLQwenImage

    from serving.memory import model_configs

    configs = model_configs(preset, folders)
    vae_defaults = {
        name: p.default for name, p in inspect.signature(AutoencoderKLQwenImage.__init__).parameters.items()
    }
    text = configs.text_encoder.get("text_config", configs.text_encoder)
    transformer = configs.transformer
    return {
        "text width (condition encoder)": text["hidden_size"],
        "text width (transformer)": transformer["joint_attention_dim"],
        "latent channels (VAE)": {**vae_defaults, **configs.vae}["z_dim"],
        "latent channels (transformer)": transformer["in_channels"] // transformer["patch_size"] ** 2,
    }


def recipe_pairs() -> list[tuple[str, object, object]]:
    """(training job, its recipe, the producer recipe that fills the store it reads), for every RayJob that trains."""
    from models.config import load_config
    from pipelines.curation import CurationConfig
    from training.config import PretrainConfig

    jobs = [m for m in kuberay_manifests().values() if m["kind"] == "RayJob"]
    producers, trainers = {}, []
    for job in jobs:
        script, config, overrides = job_config(job)
        if script == "preprocess.py":
            curation = load_config(CurationConfig, config, overrides)
            producers[curation.encode.store_dir] = curation
        elif script == "pretrain.py":
            trainers.append((job["metadata"]["name"], load_config(PretrainConfig, config, overrides)))
    assert trainers and producers
    return [(name, recipe, producers.get(recipe.store_dir)) for name, recipe in trainers]


def test_deployment_recipes_match_their_store():
    """Every training RayJob reads the store a producer RayJob writes, with the same preset and weights, so the
    text embeddings and latents it reads have the widths its transformer takes, at every phase's resolution."""
    for name, recipe, producer in recipe_pairs():
        assert producer is not None, f"{name}: no producer RayJob writes its store {recipe.store_dir}"
        encode = producer.encode
        assert recipe.preset == encode.preset, f"{name}: preset {recipe.preset}, store encoded with {encode.preset}"
        if recipe.weights_dir and encode.weights_dir:
            assert recipe.weights_dir == encode.weights_dir, name  # one VAE normalises and decodes the latents
        trained = model_widths(recipe.preset, [recipe.init, recipe.weights_dir])
        stored = model_widths(encode.preset, [encode.weights_dir])
        assert stored["text width (condition encoder)"] == trained["text width (transformer)"], (name, stored, trained)
        assert stored["latent channels (VAE)"] == trained["latent channels (transformer)"], (name, stored, trained)
        missing = sorted({phase.resolution for phase in recipe.phases} - set(encode.resolutions))
        assert not missing, f"{name}: phases at {missing} px, store encoded at {encode.resolutions}"


def test_pretraining_recipe_follows_the_memory_plan():
    """The cluster's pretraining recipe (configs/pretrain_qwen_image.yaml) loads with the project's config loader,
    runs the curriculum 256 -> 640 -> 1328, and its batch, parallelism and activation checkpointing fit an H100
    by the memory plan at its largest resolution and longest prompts; its workers fit the consumer-gpu pods."""
    from models.config import load_config
    from serving.memory import model_configs
    from training.config import PretrainConfig
    from training.memory_plan import plan_memory

    recipe = load_config(PretrainConfig, ROOT / "configs" / "pretrain_qwen_image.yaml", [])
    (job,) = [job for job in kuberay_manifests().values() if job["metadata"]["name"] == "qwen-image-pretrain"]
    _, config, _ = job_config(job)
    assert pathlib.Path(config) == ROOT / "configs" / "pretrain_qwen_image.yaml"
    resolutions = [phase.resolution for phase in recipe.phases]
    assert sorted(set(resolutions)) == [256, 640, 1328] and resolutions == sorted(resolutions)
    assert recipe.preset == "qwen-image" and recipe.use_gpu
    parallel = recipe.parallel
    for phase in recipe.phases:  # every phase's batch at its resolution, with the longest prompts
        batch = recipe.batch_size_of(phase)
        plan = plan_memory(
            model_configs(recipe.preset, [recipe.weights_dir]).transformer,
            resolution=phase.resolution,
            world=recipe.num_workers,
            batch_size=batch,
            text_tokens=MAX_TEXT_TOKENS,
            strategy=parallel.strategy,
            tensor_parallel=parallel.tensor_parallel,
            replicate=parallel.replicate,
            activation_checkpointing=parallel.activation_checkpointing,
            cpu_offload=parallel.cpu_offload,
            ema=recipe.ema_decay is not None,
        )
        assert batch <= plan.max_batch(H100_BYTES), (phase.name, plan.as_dict(H100_BYTES))
    # Low resolutions train larger batches than the last phase (the run's batch_size is the 1328 px one).
    assert [recipe.batch_size_of(phase) for phase in recipe.phases] == [64, 64, 32, recipe.batch_size]
    # The workers fit the group that offers their resource: one GPU and cpus_per_worker CPUs each.
    (cluster,) = [m for m in kuberay_manifests().values() if m["kind"] == "RayCluster"]
    (group,) = [
        g
        for g in kube.ray_groups(cluster)
        if set(kube.operator_resources(g.start_params)) & set(recipe.worker_resources)
    ]
    params = kube.operator_start_params(group)
    gpus, cpus = int(params["num-gpus"]), int(params["num-cpus"])
    max_pods = next(w["maxReplicas"] for w in cluster["spec"]["workerGroupSpecs"] if w["groupName"] == group.name)
    assert recipe.num_workers <= max_pods * gpus and recipe.cpus_per_worker * gpus <= cpus


# --- 3. Secrets ----------------------------------------------------------------------------------------------------


def can_host(group: kube.Group, options: dict) -> bool:
    """Whether Ray may place an actor with ``options`` (ray_actor_options) on a node of ``group``."""
    params = kube.operator_start_params(group)
    offered = {"CPU": float(params.get("num-cpus", 0)), "GPU": float(params.get("num-gpus", 0))}
    offered.update(kube.operator_resources(params))
    # A CPU count the config leaves out is read as 0, which any node satisfies: the reading that needs the most pods
    # to hold a secret.
    wanted = {"CPU": options.get("num_cpus", 0), "GPU": options.get("num_gpus", 0), **options.get("resources", {})}
    if any(amount > offered.get(resource, 0) for resource, amount in wanted.items() if amount):
        return False
    labels = dict(pair.split("=", 1) for pair in params.get("labels", "").split(",") if "=" in pair)
    selector = options.get("label_selector") or {}
    return all(labels.get(key) == value for key, value in selector.items() if not value.startswith(("!", "in(")))


def sets_variable(container: dict, variable: str) -> dict | None:
    """The container's env entry for ``variable`` (a value or a reference), if any."""
    return next((entry for entry in container.get("env", []) if entry["name"] == variable), None)


def test_every_replica_sees_its_secrets():
    """For every Serve deployment that reads an environment variable at start (serving.config.environment_read: the
    API key in the Ingress), the Ray container of every pod template where Ray may place a replica sets it (from
    one Secret), and the application requires the key, so a replica that does not see it refuses to start."""
    from serving.config import environment_read, parse_settings

    services = [m for m in kuberay_manifests().values() if m["kind"] == "RayService"]
    for service in services:
        groups = kube.ray_groups(service)
        serve = yaml.safe_load(service["spec"]["serveConfigV2"])
        for application in serve["applications"]:
            settings = parse_settings(application.get("args") or {})
            reads = environment_read(settings)
            assert settings.require_api_key or not settings.api_key_env, "a deployed key must be required"
            options = {d["name"]: d.get("ray_actor_options") or {} for d in application.get("deployments", [])}
            for deployment, variables in reads.items():
                hosts = [group for group in groups if can_host(group, options.get(deployment, {}))]
                assert hosts, f"{deployment} fits no group"
                for variable in variables:
                    entries = {group.name: sets_variable(group.ray_container, variable) for group in hosts}
                    missing = sorted(name for name, entry in entries.items() if entry is None)
                    assert not missing, f"{deployment} may run on {missing}, whose pods do not set {variable}"
                    sources = {
                        json.dumps(entry.get("valueFrom") or entry.get("value"), sort_keys=True)
                        for entry in entries.values()
                    }
                    assert len(sources) == 1, f"{variable} comes from different places: {sources}"
                    assert all("secretKeyRef" in (entry.get("valueFrom") or {}) for entry in entries.values()), (
                        f"{variable} is a secret: read it from a Secret, not a literal in the manifest"
                    )


# --- 4. Pods and nodes ---------------------------------------------------------------------------------------------


def test_pods_fit_their_nodes():
    """Every pod template selects a node pool whose machine type is named (launcher and README), and its requests,
    with KubeRay's autoscaler sidecar on heads, plus the DaemonSet budget fit the allocatable CPUs and memory of
    that machine as an EKS node (kube.allocatable), and its GPUs the machine's; the GPU pools of the producer recipe
    fill a pod's GPUs within its CPUs."""
    readme = (PLATFORM / "README.md").read_text()
    named = pools()
    assert all(machine in MACHINES and machine in readme for machine in named.values()), named
    ray_groups = {}
    for name, manifest in kuberay_manifests().items():
        for group in kube.ray_groups(manifest):
            pool = (group.pod.get("nodeSelector") or {}).get("qwen-image.io/pool")
            assert pool in named, f"{name} {group.name}: selects no named node pool ({pool})"
            machine = MACHINES[named[pool]]
            cpus, mib, gpus = kube.pod_requests(group)
            free_cpus, free_mib = kube.allocatable(machine)
            assert cpus + DAEMONSET_CPUS <= free_cpus, (
                f"{name} {group.name}: {cpus} CPUs on {named[pool]} ({free_cpus})"
            )
            assert mib + DAEMONSET_MIB <= free_mib, (
                f"{name} {group.name}: {float(mib) / 1024:.1f} GiB on {named[pool]} ({float(free_mib) / 1024:.1f} GiB)"
            )
            assert gpus <= machine.gpus, f"{name} {group.name}: {gpus} GPUs on {named[pool]}"
            if manifest["kind"] == "RayCluster":
                ray_groups[group.name] = kube.operator_start_params(group)

    # The producer recipe's GPU pools: the actors that fill one pod's GPUs also fit its CPUs.
    from models.config import load_config
    from pipelines.curation import CurationConfig
    from pipelines.pools import PoolConfig

    def gpu_pools(model, prefix=""):
        for field in type(model).model_fields:
            value = getattr(model, field)
            if isinstance(value, PoolConfig) and value.num_gpus:
                yield prefix + field, value
            elif hasattr(type(value), "model_fields"):
                yield from gpu_pools(value, f"{prefix}{field}.")

    curation = load_config(CurationConfig, PLATFORM / "preprocess.yaml", [])
    for pool_name, pool in gpu_pools(curation):
        (params,) = [p for p in ray_groups.values() if set(pool.resources) <= set(kube.operator_resources(p))]
        per_pod = int(float(params["num-gpus"]) / pool.num_gpus)
        assert per_pod * pool.num_cpus <= float(params["num-cpus"]), (pool_name, per_pod, params["num-cpus"])

    # The formulas on one figure each (amazon-eks-ami's own test values): 8 vCPUs reserve 90m; 58 pods 893 MiB.
    assert kube.kube_reserved_cpu_millis(8) == 90 and kube.kube_reserved_memory_mib(58) == 893


# --- 5. rayStartParams ---------------------------------------------------------------------------------------------


def test_ray_start_params_parse_like_kuberay():
    """Every group's rayStartParams as KubeRay v1.7.0 reads them (tests/platform/kube.py cites the code): values are
    strings, ``resources`` unmarshals into numbers so the operator goes on to pass the GPU count, and the command it
    writes, split by bash, is one ``ray start`` accepts, reading the same custom resources and counts."""
    from ray._private.utils import parse_resources_json
    from ray.autoscaler._private.cli_logger import cf, cli_logger
    from ray.scripts.scripts import start

    checked = 0
    for name, manifest in kuberay_manifests().items():
        for group in kube.ray_groups(manifest):
            assert all(isinstance(value, str) for value in group.start_params.values()), (name, group.start_params)
            params = kube.operator_start_params(group)  # raises OperatorRejects where the operator logs an error
            gpus = int(kube.quantity(group.limits.get("nvidia.com/gpu", 0)))
            assert int(params.get("num-gpus", 0)) == gpus, f"{name} {group.name}: the operator passes no GPU count"
            parsed = start.make_context("start", kube.ray_start_arguments(group)).params
            resources = parse_resources_json(parsed["resources"], cli_logger, cf) if parsed["resources"] else {}
            assert resources == kube.operator_resources(params), (name, group.name)
            assert parsed["num_cpus"] == int(params["num-cpus"]) and parsed["num_gpus"] == (gpus or None)
            checked += 1
    assert checked >= 6

    # The rules bite: the double-quoted form stops the operator; JSON with a space, unquoted, breaks the command.
    quoted = kube.Group("g", False, {"resources": '"{\\"producer\\": 1000}"'}, {"containers": [{}]}, [])
    quoted.pod["containers"][0]["resources"] = {"limits": {"cpu": "8", "nvidia.com/gpu": "1"}}
    with pytest.raises(kube.OperatorRejects):
        kube.operator_start_params(quoted)
    bare = kube.Group("g", False, {"resources": '{"producer": 1000}'}, quoted.pod, [])
    with pytest.raises(Exception, match="unexpected extra argument|Got unexpected"):
        start.make_context("start", kube.ray_start_arguments(bare))
