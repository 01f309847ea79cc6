"""What Kubernetes, the KubeRay operator and `ray start` do with the manifests in platform/, replicated for the tests.

- **Schemas.** KubeRay's CRDs (``tests/platform/crds``, version and source in its README) are structural schemas:
  the API server validates a custom resource against them and *prunes*, without an error, every field they do not
  declare, unless a node says ``x-kubernetes-preserve-unknown-fields``. ``undeclared_fields`` walks a manifest
  along its schema and lists what would be pruned; ``schema_errors`` is the validation itself (jsonschema, with the
  OpenAPI v3 keywords it does not know left out: ``nullable``, ``format``, the ``x-kubernetes-*`` extensions).
- **rayStartParams.** ``operator_start_params`` completes a group's ``rayStartParams`` as KubeRay v1.7.0 does before
  it writes the ``ray start`` command (ray-operator/controllers/ray/common/pod.go at 59d663aeec13760646da3db9c1cf8cf
  e883e30b7: ``generateRayStartCommand``, ``addWellKnownAcceleratorResources``, ``getResourcesMap``,
  ``convertParamMap``); ``ray_start_arguments`` is that command as the container's ``bash -c`` splits it.
- **Nodes.** ``allocatable`` is what the kubelet of an EKS node offers pods (capacity less kube-reserved and the
  eviction threshold), by the formulas of awslabs/amazon-eks-ami's nodeadm (nodeadm/internal/kubelet/config.go and
  eni_max_pods.go at 81fec2e895854f599974fe4d3d72f61c0a9aaffa); platform/README.md states the figures.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import json
import pathlib
import re
import shlex
from fractions import Fraction

import jsonschema
import yaml

CRDS = pathlib.Path(__file__).resolve().parent / "crds"
CRD_FILES = {
    "RayCluster": "ray.io_rayclusters.yaml.gz",
    "RayJob": "ray.io_rayjobs.yaml.gz",
    "RayService": "ray.io_rayservices.yaml.gz",
}
# ObjectMeta fields a manifest may set; the API server handles metadata itself (the CRD's schema says only "object").
OBJECT_META = {"name", "namespace", "generateName", "labels", "annotations", "finalizers", "ownerReferences"}
# OpenAPI v3 keywords that are not JSON Schema (or that jsonschema would read differently): left out for validation.
NOT_JSON_SCHEMA = {"nullable", "format"}


# --- Schemas -----------------------------------------------------------------------------------------------------


@functools.cache
def crd_schema(kind: str, version: str = "v1") -> dict:
    """The ``openAPIV3Schema`` of ``kind``'s served ``version`` in the vendored CRD."""
    with gzip.open(CRDS / CRD_FILES[kind], "rt") as handle:
        crd = yaml.load(handle, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    (served,) = [entry for entry in crd["spec"]["versions"] if entry["name"] == version]
    assert served["served"], f"{kind} {version} is not served by this CRD"
    return served["schema"]["openAPIV3Schema"]


def _json_schema(node):
    if isinstance(node, dict):
        return {
            key: _json_schema(value)
            for key, value in node.items()
            if key not in NOT_JSON_SCHEMA and not key.startswith("x-kubernetes-")
        }
    if isinstance(node, list):
        return [_json_schema(value) for value in node]
    return node


def schema_errors(manifest: dict, schema: dict) -> list[str]:
    """What the API server's validation against ``schema`` refuses (CEL rules aside: ``cel_rules_reached``)."""
    validator = jsonschema.Draft4Validator(_json_schema(schema))
    return [f"{'.'.join(map(str, error.absolute_path))}: {error.message}" for error in validator.iter_errors(manifest)]


def undeclared_fields(value, schema: dict, path: str = "") -> list[str]:
    """Paths of the fields of ``value`` that the structural ``schema`` does not declare: the API server drops them.

    An object node keeps the keys in its ``properties``; ``additionalProperties`` (a schema) declares any other key
    with that schema; ``x-kubernetes-preserve-unknown-fields: true`` keeps unknown keys; without either, an object
    keeps nothing beyond its properties (an object with neither properties nor additionalProperties keeps nothing).
    ``x-kubernetes-int-or-string`` nodes are scalars. At the root, ``metadata`` is ObjectMeta."""
    if schema.get("x-kubernetes-int-or-string"):
        return []
    if isinstance(value, list):
        items = schema.get("items")
        if items is None:
            return []  # a list where the schema wants another type: schema_errors says so
        return [
            field for index, item in enumerate(value) for field in undeclared_fields(item, items, f"{path}[{index}]")
        ]
    if not isinstance(value, dict):
        return []
    declared = schema.get("properties", {})
    extra = schema.get("additionalProperties")
    keep_unknown = schema.get("x-kubernetes-preserve-unknown-fields", False)
    found = []
    for key, item in value.items():
        where = f"{path}.{key}" if path else key
        if path == "" and key == "metadata":
            found += [f"metadata.{name}" for name in item if name not in OBJECT_META]
        elif key in declared:
            found += undeclared_fields(item, declared[key], where)
        elif isinstance(extra, dict):
            found += undeclared_fields(item, extra, where)
        elif not keep_unknown:
            found.append(where)
    return found


def cel_rules_reached(value, schema: dict, path: str = "") -> list[str]:
    """Paths of the fields of ``value`` whose schema node carries CEL rules (``x-kubernetes-validations``), which
    these tests do not evaluate: a manifest that sets none of them loses nothing by that."""
    found = [path or "<root>"] if schema.get("x-kubernetes-validations") else []
    if isinstance(value, list) and schema.get("items"):
        for index, item in enumerate(value):
            found += cel_rules_reached(item, schema["items"], f"{path}[{index}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            child = schema.get("properties", {}).get(key)
            if child is None and isinstance(schema.get("additionalProperties"), dict):
                child = schema["additionalProperties"]
            if child is not None:
                found += cel_rules_reached(item, child, f"{path}.{key}" if path else key)
    return found


def undeclared_model_fields(value, model, path: str = "") -> list[str]:
    """Keys of ``value`` that the pydantic ``model`` (and the models of its fields, recursively) does not declare.
    Serve's ``ServeDeploySchema`` ignores such keys without an error, so a misspelt option would be lost."""
    import typing

    import pydantic

    def models_in(annotation) -> list[type]:
        if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
            return [annotation]
        return [found for arg in typing.get_args(annotation) for found in models_in(arg)]

    if isinstance(value, list):
        return [field for i, item in enumerate(value) for field in undeclared_model_fields(item, model, f"{path}[{i}]")]
    if not isinstance(value, dict):
        return []
    names = {}
    for name, field in model.model_fields.items():
        names[name] = field
        if field.alias:
            names[field.alias] = field
    found = []
    for key, item in value.items():
        where = f"{path}.{key}" if path else key
        if key not in names:
            if model.model_config.get("extra") != "allow":
                found.append(where)
            continue
        nested = models_in(names[key].annotation)
        if len(nested) == 1 and isinstance(item, dict | list):
            # list[Model] and Optional[Model] hold one model; a dict[str, Model] holds it under free keys.
            origin = typing.get_origin(names[key].annotation)
            if origin is dict and isinstance(item, dict):
                for sub, entry in item.items():
                    found += undeclared_model_fields(entry, nested[0], f"{where}.{sub}")
            else:
                found += undeclared_model_fields(item, nested[0], where)
    return found


# --- Ray groups of a KubeRay resource ----------------------------------------------------------------------------

# KubeRay's autoscaler sidecar in the head pod when enableInTreeAutoscaling is on, unless autoscalerOptions.resources
# says otherwise (BuildAutoscalerContainer and mergeAutoscalerOverrides, pod.go at the commit above).
AUTOSCALER_RESOURCES = {"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"cpu": "500m", "memory": "512Mi"}}


@dataclasses.dataclass
class Group:
    """One head or worker group of a RayCluster spec (of a RayCluster, a RayService or a RayJob)."""

    name: str
    head: bool
    start_params: dict
    pod: dict  # the pod template's spec
    extra_containers: list[dict]  # containers the operator adds (the autoscaler sidecar)

    @property
    def ray_container(self) -> dict:
        return self.pod["containers"][0]  # KubeRay's RayContainerIndex

    @property
    def limits(self) -> dict:
        return self.ray_container.get("resources", {}).get("limits", {})


def cluster_spec(manifest: dict) -> dict | None:
    spec = manifest["spec"]
    return {"RayCluster": spec, "RayService": spec.get("rayClusterConfig"), "RayJob": spec.get("rayClusterSpec")}[
        manifest["kind"]
    ]


def ray_groups(manifest: dict) -> list[Group]:
    spec = cluster_spec(manifest)
    if spec is None:
        return []  # a RayJob on an existing cluster (clusterSelector)
    sidecar = []
    if spec.get("enableInTreeAutoscaling"):
        resources = (spec.get("autoscalerOptions") or {}).get("resources") or AUTOSCALER_RESOURCES
        sidecar = [{"name": "autoscaler", "resources": resources}]
    head = spec["headGroupSpec"]
    groups = [Group("head", True, dict(head.get("rayStartParams") or {}), head["template"]["spec"], sidecar)]
    for worker in spec.get("workerGroupSpecs", []):
        params = dict(worker.get("rayStartParams") or {})
        groups.append(Group(worker["groupName"], False, params, worker["template"]["spec"], []))
    return groups


# --- Quantities --------------------------------------------------------------------------------------------------

_SUFFIXES = {
    **{s: Fraction(1024) ** (i + 1) for i, s in enumerate(["Ki", "Mi", "Gi", "Ti", "Pi", "Ei"])},
    **{"n": Fraction(1, 10**9), "u": Fraction(1, 10**6), "m": Fraction(1, 1000), "": Fraction(1)},
    **{s: Fraction(1000) ** (i + 1) for i, s in enumerate(["k", "M", "G", "T", "P", "E"])},
}


def quantity(text) -> Fraction:
    """A Kubernetes resource quantity ("500m", "32Gi", "1e3", 8) as an exact number."""
    match = re.fullmatch(
        r"([+-]?\d+(?:\.\d*)?|[+-]?\.\d+)(?:([eE][+-]?\d+)|(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?)", str(text)
    )
    if not match:
        raise ValueError(f"not a Kubernetes quantity: {text!r}")
    number = Fraction(match.group(1))
    if match.group(2):
        return number * Fraction(10) ** int(match.group(2)[1:])
    return number * _SUFFIXES[match.group(3) or ""]


def go_value(amount: Fraction) -> int:
    """``resource.Quantity.Value()``: rounded up to an integer, away from zero."""
    whole = -((-amount.numerator) // amount.denominator) if amount > 0 else amount.numerator // amount.denominator
    return int(whole)


# --- rayStartParams as KubeRay completes them ---------------------------------------------------------------------


class OperatorRejects(ValueError):
    """A rayStartParams value the operator cannot parse: it logs the error and skips what depended on it."""


def is_gpu_resource(key: str) -> bool:
    """``utils.IsGPUResourceKey`` (ray-operator/controllers/ray/utils/resources.go)."""
    return key.endswith("gpu") or re.search(r"nvidia\.com/mig-\d+g\.\d+gb$", key) is not None


def operator_resources(params: dict) -> dict[str, float]:
    """``getResourcesMap``: the ``resources`` value with surrounding quotes, backticks and spaces trimmed
    (``strings.Trim(s, "'\\"` ")``), then ``json.Unmarshal`` into ``map[string]float64``: a JSON object of numbers."""
    if "resources" not in params:
        return {}
    text = params["resources"].strip("'\"` ")

    def constant(name: str):
        raise OperatorRejects(f"{name} is not JSON")

    try:
        parsed = json.loads(text, parse_constant=constant)
    except (json.JSONDecodeError, OperatorRejects) as error:
        raise OperatorRejects(
            f"rayStartParams.resources {params['resources']!r}: failed to unmarshal ({error})"
        ) from None
    if parsed is None:
        return {}
    if not isinstance(parsed, dict) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in parsed.values()
    ):
        raise OperatorRejects(f"rayStartParams.resources {params['resources']!r} is not an object of numbers")
    return {key: float(value) for key, value in parsed.items()}


def operator_start_params(group: Group) -> dict[str, str]:
    """The group's rayStartParams completed as ``generateRayStartCommand`` does: ``num-cpus`` from the Ray
    container's CPU limit (else request), ``memory`` from its memory limit, then ``num-gpus`` from a GPU limit,
    which ``addWellKnownAcceleratorResources`` adds only after ``resources`` parses. Raises ``OperatorRejects``
    where the operator logs an error and skips the accelerators."""
    params = dict(group.start_params)
    resources = group.ray_container.get("resources", {})
    limits, requests = resources.get("limits", {}), resources.get("requests", {})
    if "num-cpus" not in params:
        cpu = limits.get("cpu") or requests.get("cpu")
        if cpu is not None and quantity(cpu) != 0:
            params["num-cpus"] = str(go_value(quantity(cpu)))
    if "memory" not in params and limits.get("memory") and quantity(limits["memory"]) != 0:
        params["memory"] = str(go_value(quantity(limits["memory"])))
    if limits:
        operator_resources(params)  # an error here returns before any accelerator is added
        for key in sorted(limits):
            if "num-gpus" not in params and is_gpu_resource(key) and quantity(limits[key]) != 0:
                params["num-gpus"] = str(go_value(quantity(limits[key])))
    if group.head:
        params.setdefault("dashboard-host", "0.0.0.0")
    else:
        params.setdefault("address", "qwen-image-head-svc.default.svc.cluster.local:6379")
    params["block"] = "true"
    return params


def ray_start_arguments(group: Group) -> list[str]:
    """The ``ray start`` arguments after ``bash -c`` has split the operator's command (``convertParamMap``: sorted
    keys; "true" / "false" values are bare flags, present when true, except for three options; others
    ``--key=value``), shell quoting removed as bash removes it."""
    params = operator_start_params(group)
    flags = []
    for key in sorted(params):
        value = params[key]
        if value.lower() in ("true", "false") and key not in ("log-color", "include-dashboard", "include-log-monitor"):
            if value.lower() == "true":
                flags.append(f" --{key} ")
        else:
            flags.append(f" --{key}={value} ")
    command = ("ray start --head " if group.head else "ray start ") + "".join(flags)
    words = shlex.split(command)
    return words[2:]


# --- Nodes -------------------------------------------------------------------------------------------------------

GIB_MIB = 1024


@dataclasses.dataclass(frozen=True)
class Machine:
    """An EC2 instance type as AWS lists it, and its network limits from amazon-eks-ami's instance-info.jsonl."""

    vcpus: int
    memory_gib: int
    gpus: int
    enis: int  # defaultMaxENIs
    ips_per_eni: int  # ipv4AddressesPerInterface

    @property
    def max_pods(self) -> int:
        """nodeadm's default (``calculateStandardMaxPods``): ENIs x (IPv4 addresses per ENI - 1) + 2."""
        return self.enis * (self.ips_per_eni - 1) + 2


# The memory the kernel reports as the node's capacity is below the instance's nominal memory (firmware, kernel);
# Karpenter's default estimate of that overhead (settings.vmMemoryOverheadPercent in aws/karpenter-provider-aws's
# chart) is 7.5%.
VM_MEMORY_OVERHEAD = Fraction(75, 1000)
EVICTION_HARD_MIB = 100  # nodeadm's evictionHard memory.available


def kube_reserved_cpu_millis(vcpus: int) -> int:
    """``getCPUMillicoresToReserve``: 6% of the first core, 1% of the second, 0.5% of the next two, 0.25% above."""
    total = vcpus * 1000
    bounds, shares = [0, 1000, 2000, 4000, total], [600, 100, 50, 25]
    return sum(
        (min(total, bounds[i + 1]) - bounds[i]) * share // 10000 for i, share in enumerate(shares) if total > bounds[i]
    )


def kube_reserved_memory_mib(max_pods: int) -> int:
    """``getMemoryMebibytesToReserve``: 11 MiB per pod the node may run, plus 255 MiB."""
    return 11 * max_pods + 255


def allocatable(machine: Machine) -> tuple[Fraction, Fraction]:
    """(CPUs, MiB) that the kubelet of an EKS node of ``machine`` offers pods."""
    cpus = Fraction(machine.vcpus * 1000 - kube_reserved_cpu_millis(machine.vcpus), 1000)
    capacity_mib = machine.memory_gib * GIB_MIB * (1 - VM_MEMORY_OVERHEAD)
    return cpus, capacity_mib - kube_reserved_memory_mib(machine.max_pods) - EVICTION_HARD_MIB


def pod_requests(group: Group) -> tuple[Fraction, Fraction, int]:
    """(CPUs, MiB, GPUs) the scheduler reserves for one pod of ``group``: the sum over its containers (the sidecars
    the operator adds included) of each one's requests, or its limits where it gives no request."""
    cpus = mib = Fraction(0)
    gpus = 0
    for container in [*group.pod["containers"], *group.extra_containers]:
        resources = container.get("resources", {})
        wanted = {**resources.get("limits", {}), **resources.get("requests", {})}
        cpus += quantity(wanted.get("cpu", 0))
        mib += quantity(wanted.get("memory", 0)) / (1024 * 1024)
        gpus += int(quantity(wanted.get("nvidia.com/gpu", 0)))
    return cpus, mib, gpus
