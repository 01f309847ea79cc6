"""Parallelism of the transformer on CPU processes (gloo): tensor parallel, FSDP2 on a 2-D mesh, activation
checkpointing, meta-device init from sharded safetensors, and DCP checkpoints across world sizes."""

from __future__ import annotations

import copy
import json
import pathlib

import pytest
import torch

from models.flow_matching import flow_matching_loss
from models.presets import MID_TRANSFORMER_CONFIG, TINY_TRANSFORMER_CONFIG, build_components
from models.prompt_embeds import PromptEmbeds
from training.checkpointer import load_checkpoint, save_checkpoint
from training.parallel import (
    ParallelConfig,
    apply_activation_checkpointing,
    apply_tensor_parallel,
    build_mesh,
    build_meta_transformer,
    clip_grad_norm_,
    parallelize,
    reduce_tensor_parallel_gradients,
)

from ..distributed import reset_resident_peak, resident_now, resident_peak_since_reset, run_here, run_ranks

CPU = torch.device("cpu")
SEED = 3


def _tiny() -> torch.nn.Module:
    return build_components("tiny", parts=("transformer",), seed=SEED).transformer.train().requires_grad_(True)


def _batch(seed: int, size: int = 8) -> dict:
    generator = torch.Generator().manual_seed(seed)
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 5:] = 0
    return {
        "latents": torch.randn(2, 16, size, size, generator=generator),
        "prompt": PromptEmbeds(
            torch.randn(2, 7, TINY_TRANSFORMER_CONFIG["joint_attention_dim"], generator=generator), mask
        ),
        "seed": seed,
    }


def _loss(model, batch) -> torch.Tensor:
    generator = torch.Generator().manual_seed(batch["seed"] + 1)
    return flow_matching_loss(model, batch["latents"], batch["prompt"], generator=generator).loss


def _full(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def _tp_matches_single(rank: int, world: int) -> None:
    from torch.distributed.device_mesh import init_device_mesh

    reference = _tiny()
    split = copy.deepcopy(reference)
    mesh = init_device_mesh("cpu", (world // 2, 2), mesh_dim_names=("dp", "tp"))["tp"]  # pairs of processes
    apply_tensor_parallel(split, mesh)
    query = split.transformer_blocks[0].attn.to_q.weight
    assert query.to_local().shape[0] == query.shape[0] // 2  # each rank holds its heads only
    batch = _batch(seed=5)
    expected, actual = _loss(reference, batch), _loss(split, batch)
    assert torch.allclose(actual, expected, rtol=1e-5, atol=1e-6), (float(actual), float(expected))
    expected.backward()
    actual.backward()
    norm = split.transformer_blocks[0].attn.norm_q.weight
    ref_norm = reference.transformer_blocks[0].attn.norm_q.weight
    assert not torch.allclose(norm.grad, ref_norm.grad, atol=1e-6)  # partial before the TP reduction
    reduce_tensor_parallel_gradients(split, mesh)
    for (name, ref), (_, param) in zip(reference.named_parameters(), split.named_parameters(), strict=True):
        assert (ref.grad is None) == (param.grad is None), name
        if ref.grad is not None:
            assert torch.allclose(_full(param.grad), ref.grad, rtol=1e-5, atol=1e-6), name


def _two_d_mesh_step_and_checkpoint(rank: int, world: int, folder: str) -> None:
    """TP 2 x FSDP 2: loss, gradient norm and gradients equal the single process's; a checkpoint round trip after
    the optimiser step is exact."""
    parallel = build_mesh(ParallelConfig(strategy="fsdp", tensor_parallel=2), CPU, world, rank)
    assert (parallel.dp_world, parallel.tp_mesh.size()) == (2, 2)
    model = parallelize(build_meta_transformer(dict(TINY_TRANSFORMER_CONFIG)), parallel, build_full=_tiny)
    model.train().requires_grad_(True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    reference = _tiny()
    batch = _batch(seed=9)  # every data-parallel rank gets the same batch: the averaged gradient is the same one
    loss, ref_loss = _loss(model, batch), _loss(reference, batch)
    assert torch.allclose(loss, ref_loss, rtol=1e-5), (float(loss), float(ref_loss))
    loss.backward()
    ref_loss.backward()
    reduce_tensor_parallel_gradients(model, parallel.tp_mesh)
    norm = clip_grad_norm_(list(model.parameters()), 1.0)
    ref_norm = clip_grad_norm_(list(reference.parameters()), 1.0)
    assert norm == pytest.approx(ref_norm, rel=1e-5)
    for (name, param), ref in zip(model.named_parameters(), reference.parameters(), strict=True):
        assert (param.grad is None) == (ref.grad is None), name
        if ref.grad is not None:  # gradients, not stepped weights: Adam's first step is about sign(gradient)
            assert torch.allclose(_full(param.grad), ref.grad, rtol=1e-5, atol=1e-6), name
    optimizer.step()

    save_checkpoint(folder, model=model, optimizer=optimizer, rank=rank, world=world, info={"step": 1})
    restored = parallelize(build_meta_transformer(dict(TINY_TRANSFORMER_CONFIG)), parallel)  # allocated, not filled
    restored.train().requires_grad_(True)
    restored_optimizer = torch.optim.AdamW(restored.parameters(), lr=1e-3)
    info, _ = load_checkpoint(folder, model=restored, optimizer=restored_optimizer, rank=rank)
    assert info["step"] == 1 and info["world_size"] == world
    for (name, param), other in zip(model.named_parameters(), restored.parameters(), strict=True):
        assert torch.equal(_full(param.detach()), _full(other.detach())), name
        saved, loaded = optimizer.state.get(param, {}), restored_optimizer.state.get(other, {})
        assert saved.keys() == loaded.keys(), name
        for key in saved:
            assert torch.equal(_full(saved[key]), _full(loaded[key])), (name, key)


def _hsdp_step(rank: int, world: int) -> None:
    """HSDP (2 replicas x 2 shards): the same batch everywhere gives the single process's loss and gradients."""
    parallel = build_mesh(ParallelConfig(strategy="fsdp", replicate=2), CPU, world, rank)
    assert parallel.dp_mesh.ndim == 2 and parallel.dp_world == 4 and parallel.tp_mesh is None
    model = parallelize(build_meta_transformer(dict(TINY_TRANSFORMER_CONFIG)), parallel, build_full=_tiny)
    model.train().requires_grad_(True)
    weight = model.transformer_blocks[0].attn.to_q.weight
    assert weight.to_local().shape[0] == weight.shape[0] // 2  # sharded within a replica, whole across them
    reference = _tiny()
    batch = _batch(seed=13)
    loss, ref_loss = _loss(model, batch), _loss(reference, batch)
    assert torch.allclose(loss, ref_loss, rtol=1e-5)
    loss.backward()
    ref_loss.backward()
    for (name, param), ref in zip(model.named_parameters(), reference.parameters(), strict=True):
        if ref.grad is not None:
            assert torch.allclose(_full(param.grad), ref.grad, rtol=1e-5, atol=1e-6), name


def test_tensor_parallel_matches_single(tmp_path):
    """2-way TP: loss and every gradient equal the unsharded model's (1e-5); then a 2-D mesh (TP 2 x FSDP 2, four
    processes) takes a training step equal to the single-process one and round-trips a checkpoint exactly."""
    run_ranks(_four_processes, 4, str(tmp_path / "checkpoint"))


def _four_processes(rank: int, world: int, folder: str) -> None:
    """One start of four processes for every check (each start costs seconds of imports): 2-way TP in two pairs,
    the 2-D mesh, HSDP."""
    _tp_matches_single(rank, world)
    _two_d_mesh_step_and_checkpoint(rank, world, folder)
    _hsdp_step(rank, world)


def _saved_activation_bytes(model, batch) -> tuple[torch.Tensor, int]:
    saved = []

    def pack(tensor):
        saved.append(tensor.numel() * tensor.element_size())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = _loss(model, batch)
    return loss, sum(saved)


def test_activation_checkpointing_same_loss():
    """Checkpointing every block gives the same loss and gradients, bit for bit, while keeping far fewer
    activations; every second block checkpoints half of them, and parameter names do not change."""
    reference, every, second = _tiny(), _tiny(), _tiny()
    apply_activation_checkpointing(every, 1)
    apply_activation_checkpointing(second, 2)
    assert [name for name, _ in every.named_parameters()] == [name for name, _ in reference.named_parameters()]
    batch = _batch(seed=4, size=32)
    results = {}
    for label, model in (("none", reference), ("every", every), ("second", second)):
        loss, saved = _saved_activation_bytes(model, batch)
        loss.backward()
        results[label] = (loss, saved, {name: param.grad for name, param in model.named_parameters()})
    for label in ("every", "second"):
        assert torch.equal(results[label][0], results["none"][0])
        for name, grad in results["none"][2].items():
            other = results[label][2][name]
            assert (grad is None and other is None) or torch.equal(grad, other), (label, name)
    none, every_saved, second_saved = (results[label][1] for label in ("none", "every", "second"))
    assert every_saved < second_saved < none
    assert every_saved < 0.4 * none


def _load_mid_model(rank: int, world: int, folder: str, results: str) -> None:
    import gc

    from safetensors import safe_open

    gc.collect()
    before = resident_now()
    reset_resident_peak()
    parallel = build_mesh(ParallelConfig(strategy="fsdp"), CPU, world, rank)
    model = parallelize(build_meta_transformer(MID_TRANSFORMER_CONFIG), parallel, weights_folder=pathlib.Path(folder))
    peak = resident_peak_since_reset() - before
    local = sum(param.to_local().numel() * 4 for param in model.parameters())
    pathlib.Path(results, f"rank{rank}.json").write_text(json.dumps({"peak": peak, "local": local}))
    index = json.loads((pathlib.Path(folder) / "diffusion_pytorch_model.safetensors.index.json").read_text())
    state = model.state_dict()
    for name, filename in index["weight_map"].items():
        with safe_open(str(pathlib.Path(folder) / filename), framework="pt") as handle:
            assert torch.equal(state[name].full_tensor(), handle.get_tensor(name)), name


def test_meta_init_loads_sharded_weights(tmp_path):
    """A transformer saved as several safetensors files with an index is loaded by two ranks built on the meta
    device: the weights equal the saved ones, and each rank's resident memory grows by less than the model's
    size while loading (measured from Linux's peak resident size)."""
    from diffusers import QwenImageTransformer2DModel

    torch.manual_seed(0)
    model = QwenImageTransformer2DModel(**MID_TRANSFORMER_CONFIG)
    full_bytes = sum(param.numel() * 4 for param in model.parameters())
    model.save_pretrained(tmp_path / "transformer", max_shard_size="20MB", safe_serialization=True)
    del model
    assert len(list((tmp_path / "transformer").glob("*.safetensors"))) > 1
    (tmp_path / "results").mkdir()
    # Spawned ranks: the resident sizes measured are the rank's own (tests/distributed.py).
    run_ranks(_load_mid_model, 2, str(tmp_path / "transformer"), str(tmp_path / "results"), start_method="spawn")
    for rank in range(2):
        measured = json.loads((tmp_path / "results" / f"rank{rank}.json").read_text())
        assert measured["local"] == pytest.approx(full_bytes / 2, rel=0.01)
        assert measured["peak"] < full_bytes, (measured, full_bytes)  # the whole model never was in memory


def _train_and_save(rank: int, world: int, folder: str) -> None:
    from safetensors.torch import save_file

    parallel = build_mesh(ParallelConfig(strategy="fsdp"), CPU, world, rank)
    model = parallelize(build_meta_transformer(dict(TINY_TRANSFORMER_CONFIG)), parallel, build_full=_tiny)
    model.train().requires_grad_(True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for step in range(2):
        optimizer.zero_grad()
        _loss(model, _batch(seed=20 + 2 * step + rank)).backward()
        clip_grad_norm_(list(model.parameters()), 1.0)
        optimizer.step()
    ema = {name: param.detach().float().clone() * 0.5 for name, param in model.named_parameters()}
    save_checkpoint(
        folder, model=model, optimizer=optimizer, rank=rank, world=world, extra={"ema": ema}, info={"step": 2}
    )
    expected = {f"param/{name}": _full(param.detach()) for name, param in model.named_parameters()}
    expected.update({f"ema/{name}": _full(tensor) for name, tensor in ema.items()})
    for name, param in model.named_parameters():
        for key, value in optimizer.state.get(param, {}).items():
            expected[f"optim/{name}/{key}"] = _full(value).reshape(-1)
    if rank == 0:
        save_file({k: v.contiguous() for k, v in expected.items()}, str(pathlib.Path(folder) / "expected.safetensors"))


def _resume_alone(rank: int, world: int, folder: str) -> None:
    from safetensors.torch import load_file

    expected = load_file(str(pathlib.Path(folder) / "expected.safetensors"))
    for strategy in ("fsdp", "ddp"):
        parallel = build_mesh(ParallelConfig(strategy=strategy), CPU, world, rank)
        model = parallelize(build_meta_transformer(dict(TINY_TRANSFORMER_CONFIG)), parallel)
        model.train().requires_grad_(True)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        ema = {name: param.detach().float().clone() for name, param in model.named_parameters()}
        info, mine = load_checkpoint(folder, model=model, optimizer=optimizer, rank=rank, extra={"ema": ema})
        assert info["world_size"] == 2 and mine is not None  # rank 0 wrote a state too
        for name, param in model.named_parameters():
            assert torch.equal(_full(param.detach()), expected[f"param/{name}"]), (strategy, name)
            assert torch.equal(_full(ema[name]), expected[f"ema/{name}"]), (strategy, name)
            for key, value in optimizer.state.get(param, {}).items():
                assert torch.equal(_full(value).reshape(-1), expected[f"optim/{name}/{key}"]), (strategy, name, key)
        stateful = sum(1 for name in dict(model.named_parameters()) if f"optim/{name}/exp_avg" in expected)
        assert len(optimizer.state) == stateful > 0


def test_resume_on_other_world_size(tmp_path):
    """A checkpoint written by two FSDP workers is restored by one worker, sharded (FSDP) and whole (DDP): weights,
    EMA and optimiser states equal the saved ones, bit for bit; parameters that had no optimiser state get none."""
    folder = str(tmp_path / "checkpoint")
    run_ranks(_train_and_save, 2, folder)
    run_here(_resume_alone, folder)  # one worker: this process, as a group of one


def test_mesh_shape_and_config_errors():
    config = ParallelConfig(strategy="fsdp", tensor_parallel=2, replicate=2)
    assert config.mesh_shape(8) == (2, 2, 2)
    with pytest.raises(ValueError, match="multiple of their product"):
        config.mesh_shape(6)
    with pytest.raises(ValueError, match="need parallel.strategy=fsdp"):
        ParallelConfig(strategy="ddp", tensor_parallel=2)
    from training.config import PretrainConfig

    with pytest.raises(ValueError, match="multiple of their product"):
        PretrainConfig.model_validate(
            {
                "store_dir": "s",
                "phases": [{"name": "p", "num_steps": 1}],
                "num_workers": 3,
                "parallel": {"strategy": "fsdp", "tensor_parallel": 2},
            }
        )


def _gloo_threads() -> int:
    # Threads a gloo thread starts (an OpenMP team's workers) inherit its name.
    tasks = pathlib.Path("/proc/self/task")
    return sum((task / "comm").read_text().strip() == "pt_gloo_runloop" for task in tasks.iterdir())


def _one_rank_checkpoint(rank: int, world: int, folder: str) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    torch.set_num_threads(2)
    model = torch.nn.Sequential(*[torch.nn.Linear(64, 64) for _ in range(64)])
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(4, 64)).sum().backward()
    optimizer.step()
    before = _gloo_threads()
    save_checkpoint(pathlib.Path(folder) / "ours", model=model, optimizer=optimizer, rank=rank, world=world)
    assert _gloo_threads() == before
    loaded = torch.nn.Sequential(*[torch.nn.Linear(64, 64) for _ in range(64)])
    load_checkpoint(
        pathlib.Path(folder) / "ours", model=loaded, optimizer=torch.optim.AdamW(loaded.parameters()), rank=rank
    )
    assert _gloo_threads() == before
    assert all(
        torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values(), strict=True)
    )
    # The same save with DCP's collectives: gloo's threads run the planning's copies and start teams of their own.
    state = {"model": get_model_state_dict(model), "optimizer": get_optimizer_state_dict(model, optimizer)}
    dcp.save(state, checkpoint_id=str(pathlib.Path(folder) / "collective"), no_dist=False)
    assert _gloo_threads() > before


def test_one_rank_checkpoint_runs_no_collective(tmp_path):
    """A process group of one rank (a single Ray Train worker) saves and loads its checkpoint without DCP's
    collectives, so gloo's threads start no OpenMP teams: with them libgomp manages more threads than CPUs and stops
    spin-waiting in the training threads' team for the rest of the process (the demo's worker lost a quarter of its
    speed after its first checkpoint). The collective save beside it shows the teams the check looks for."""
    run_ranks(_one_rank_checkpoint, 1, str(tmp_path))


def test_bf16_if_native_follows_the_cpu(monkeypatch):
    """``bf16_if_native`` computes in bf16 on GPU and on CPUs with native bf16 only: emulated bf16 (AVX2) is many
    times slower than fp32."""
    from training import parallel

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    for native in (True, False):
        monkeypatch.setattr(parallel, "cpu_has_bf16", lambda native=native: native)
        assert parallel.compute_dtype("bf16_if_native", cpu) == (torch.bfloat16 if native else torch.float32)
        assert parallel.compute_dtype("bf16_if_native", gpu) == torch.bfloat16
        assert (
            parallel.compute_dtype("auto", cpu) == torch.float32
            and parallel.compute_dtype("bf16", cpu) == torch.bfloat16
        )
    assert parallel.cpu_has_bf16() in (True, False)
