"""LoRA fine-tuning of the released layout: adapters trained with the pretraining loop's own functions, saved in
diffusers' format and loaded both ways; the released folder accepted as ``init`` by every job, an incomplete one
refused part by part."""

from __future__ import annotations

import hashlib
import json
import pathlib
import shutil

import pytest
import torch

from models.generation import TextToImage
from models.lora import ADAPTER_FILE
from models.packing import unpack_latents
from models.prompt_embeds import PromptEmbeds
from training.checkpointer import export_adapter
from training.config import PretrainConfig
from training.loop import TrainState, _train_step, build_model, trainable_parameters
from training.post_training.policy import single_process

TEXTS = ["a photo of sks dog", "a watercolour of a red barn"]
# Every linear layer of the image stream's blocks: on two prompts the tiny model memorises in a few hundred steps.
TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]
TARGETS += ["img_mlp.net.0.proj", "img_mlp.net.2", "img_mod.1"]
STEPS = 600


def _digest(folder: str) -> str:
    digest = hashlib.sha256()
    for path in sorted(pathlib.Path(folder).rglob("*")):
        if path.is_file():
            digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


def _lora_config(init: str, **lora) -> PretrainConfig:
    return PretrainConfig.model_validate(
        {
            "store_dir": "unused",
            "init": init,
            "lora": {"rank": 8, "alpha": 8, "target_modules": TARGETS, **lora},
            "optim": {"lr": 3e-3, "warmup_steps": 10, "weight_decay": 0.0},
            "phases": [{"name": "lora", "num_steps": STEPS, "resolution": 64}],
        }
    )


@pytest.fixture(scope="module")
def memorized(released_folder, tiny_components, tmp_path_factory):
    """LoRA on the released tiny folder, trained on two (prompt, latent) pairs with the pretraining loop's own
    functions (``build_model``, ``_train_step``: what each Ray Train worker runs) in this process, exported with the
    loop's adapter export. Returns the model, the targets, the adapter folder and the folder's digest before."""
    from models.condition_encoder import ConditionEncoder

    before = _digest(released_folder)
    config = _lora_config(released_folder)
    parallel = single_process()
    model = build_model(config, parallel, restoring=False)
    optimizer = torch.optim.AdamW(trainable_parameters(model), lr=config.optim.lr, weight_decay=0.0)
    prompt = ConditionEncoder(tiny_components.text_encoder, tiny_components.tokenizer).encode(TEXTS)
    targets = torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(0))
    batch = {"latents": targets, "text_embeds": prompt.embeds, "text_mask": prompt.mask}
    state = TrainState()
    losses = [_train_step(model, optimizer, [batch], state, config, 1.0, parallel)[0] for _ in range(STEPS)]
    adapter = tmp_path_factory.mktemp("lora") / "adapter"
    assert export_adapter(model, adapter, rank=0) == adapter / ADAPTER_FILE
    return {"model": model, "targets": targets, "adapter": str(adapter), "before": before, "losses": losses}


def test_lora_memorizes_and_base_is_untouched(memorized, released_folder, tiny_components):
    from safetensors.torch import load_file

    model = memorized["model"]
    trained = {name for name, param in model.named_parameters() if param.requires_grad}
    assert trained and all(".lora_" in name for name in trained)
    assert sum(p.numel() for n, p in model.named_parameters() if n in trained) < 0.1 * sum(
        p.numel() for p in model.parameters()
    )
    losses = memorized["losses"]
    assert sum(losses[-50:]) / 50 < 0.75 * sum(losses[:50]) / 50

    # The base: every frozen weight bit for bit the released folder's, and the folder's files unchanged.
    released = {}
    for path in (pathlib.Path(released_folder) / "transformer").glob("*.safetensors"):
        released.update(load_file(path))
    frozen = {n.replace(".base_layer.", "."): p for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen.keys() == released.keys()
    assert all(torch.equal(frozen[name], released[name]) for name in released)
    assert all(torch.equal(frozen[n], p) for n, p in tiny_components.transformer.named_parameters())
    assert _digest(released_folder) == memorized["before"]

    # Through the inference path (the generator, its condition encoder, the adapter file): each prompt's sample is
    # nearer its own training latent than the other's; the base alone is not.
    generator = TextToImage.from_checkpoint(released_folder)
    generator.load_adapter("memorized", memorized["adapter"])
    kwargs = dict(height=64, width=64, num_steps=20, true_cfg_scale=1.0, seeds=[5, 5])
    generator.use_adapter("memorized")
    adapted = torch.cdist(generator.generate_latents(TEXTS, **kwargs).flatten(1), memorized["targets"].flatten(1))
    assert adapted[0, 0] < adapted[0, 1] and adapted[1, 1] < adapted[1, 0], adapted
    assert max(adapted[0, 0], adapted[1, 1]) < 0.85 * min(adapted[0, 1], adapted[1, 0]), adapted
    generator.use_adapter(None)
    base = torch.cdist(generator.generate_latents(TEXTS, **kwargs).flatten(1), memorized["targets"].flatten(1))
    assert base[0, 0] > 0.9 * base[0, 1] or base[1, 1] > 0.9 * base[1, 0], base


def _diffusers_latents(pipe, prompt: str) -> torch.Tensor:
    latents = pipe(
        prompt,
        negative_prompt=" ",
        height=64,
        width=64,
        num_inference_steps=4,
        true_cfg_scale=4.0,
        generator=torch.Generator().manual_seed(3),
        output_type="latent",
    ).images
    return unpack_latents(latents, 8, 8)


def _our_latents(generator: TextToImage, prompt: str) -> torch.Tensor:
    return generator.generate_latents(
        [prompt], height=64, width=64, num_steps=4, true_cfg_scale=4.0, generator=torch.Generator().manual_seed(3)
    )


def _kohya(adapter: str, folder: pathlib.Path) -> pathlib.Path:
    """Our adapter file rewritten as kohya-style trainers write one (``lora_unet_*``, ``lora_down`` / ``lora_up``,
    an ``alpha`` per layer, no metadata), which diffusers' loader converts."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(pathlib.Path(adapter) / ADAPTER_FILE), framework="pt") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118  (safe_open is no dict)
        alpha = json.loads(handle.metadata()["lora_adapter_metadata"])["transformer.lora_alpha"]
    converted = {}
    for key, value in tensors.items():
        layer, kind = key.removeprefix("transformer.").rsplit(".lora_", 1)
        flat = "lora_unet_" + layer.replace(".", "_")
        converted[f"{flat}.{'lora_down' if kind.startswith('A') else 'lora_up'}.weight"] = value
        converted[f"{flat}.alpha"] = torch.tensor(float(alpha))
    folder.mkdir()
    save_file(converted, str(folder / "kohya_style.safetensors"))
    return folder / "kohya_style.safetensors"


def test_lora_loads_in_diffusers(memorized, released_folder, tmp_path):
    from diffusers import QwenImagePipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    ours = TextToImage.from_checkpoint(released_folder)
    base = _our_latents(ours, TEXTS[0])
    weight = ours.components.transformer.transformer_blocks[0].attn.to_q.weight
    pointer, original = weight.data_ptr(), weight.detach().clone()

    # Ours -> diffusers: QwenImagePipeline.load_lora_weights reads the adapter file we export.
    pipe = QwenImagePipeline.from_pretrained(released_folder, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(memorized["adapter"])
    ours.load_adapter("memorized", memorized["adapter"])
    ours.use_adapter("memorized")
    adapted = _our_latents(ours, TEXTS[0])
    assert (adapted - _diffusers_latents(pipe, TEXTS[0])).abs().max().item() <= 1e-5
    assert (adapted - base).abs().max().item() > 1e-2  # the adapter changes the image, or this proves nothing

    # Another tool's layout (kohya-style keys with per-layer alphas) gives the same model.
    ours.load_adapter("kohya", _kohya(memorized["adapter"], tmp_path / "kohya"))
    ours.use_adapter("kohya")
    assert (_our_latents(ours, TEXTS[0]) - adapted).abs().max().item() <= 1e-5

    # Diffusers -> ours: an adapter diffusers adds and saves with QwenImagePipeline.save_lora_weights.
    theirs = QwenImagePipeline.from_pretrained(released_folder, local_files_only=True)
    theirs.set_progress_bar_config(disable=True)
    torch.manual_seed(1)  # init_lora_weights=False: random A and B, a non-trivial adapter
    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=["to_q", "add_k_proj", "img_mlp.net.2"], init_lora_weights=False
    )
    theirs.transformer.add_adapter(config)
    QwenImagePipeline.save_lora_weights(
        tmp_path / "theirs",
        transformer_lora_layers=get_peft_model_state_dict(theirs.transformer),
        transformer_lora_adapter_metadata=theirs.transformer.peft_config["default"].to_dict(),
    )
    ours.load_adapter("theirs", tmp_path / "theirs")
    ours.use_adapter("theirs")
    theirs_latents = _our_latents(ours, TEXTS[1])
    assert (theirs_latents - _diffusers_latents(theirs, TEXTS[1])).abs().max().item() <= 1e-5
    ours.use_adapter(None)
    assert (theirs_latents - _our_latents(ours, TEXTS[1])).abs().max().item() > 1e-2

    # Adapters come and go without reloading the base: the same tensor, the same values, the base's images.
    for name in ("memorized", "kohya", "theirs"):
        ours.unload_adapter(name)
    assert ours.adapters == {} and not any("lora" in n for n, _ in ours.components.transformer.named_parameters())
    weight = ours.components.transformer.transformer_blocks[0].attn.to_q.weight
    assert weight.data_ptr() == pointer and torch.equal(weight, original)
    assert torch.equal(_our_latents(ours, TEXTS[0]), base)
    with pytest.raises(ValueError, match="does not exist"):
        ours.load_adapter("missing", tmp_path / "nowhere")


def test_finetune_from_released_layout(released_folder, tiny_components, tmp_path):
    from training.checkpointer import ensure_base
    from training.config import PretrainConfig
    from training.post_training.config import DpoConfig
    from training.post_training.dpo import PairBatch, dpo_step
    from training.post_training.policy import Policy
    from training.vae_finetune import VaeFinetuneConfig

    tiny = tiny_components.transformer.state_dict()
    parallel = single_process()

    def starts_from_release(model: torch.nn.Module) -> None:
        state = {n.replace(".base_layer.", "."): p for n, p in model.state_dict().items() if ".lora_" not in n}
        assert state.keys() == tiny.keys() and all(torch.equal(state[name], tiny[name]) for name in tiny)

    # SFT (a pretraining recipe), full and LoRA: it starts from the released transformer, and the released folder
    # is the run's base (sample grids' VAE and encoder, the parts every export links to).
    sft = {"store_dir": str(tmp_path / "store"), "init": released_folder, "phases": [{"name": "sft", "num_steps": 1}]}
    for lora in (None, {"rank": 4}):
        config = PretrainConfig.model_validate({**sft, "lora": lora})
        assert config.init == config.weights_dir == str(pathlib.Path(released_folder).resolve())
        assert config.preset == "qwen-image"
        assert ensure_base(tmp_path / "run", config.preset, [config.weights_dir]) == pathlib.Path(config.init)
        model = build_model(config, parallel, restoring=False)
        starts_from_release(model)
        trained = [name for name, param in model.named_parameters() if param.requires_grad]
        assert all(".lora_" in name for name in trained) == (lora is not None)

    # DPO (full fine-tuning, a frozen reference) from the released folder: one step moves the policy only.
    dpo = DpoConfig(init=released_folder, run_name="dpo", pairs_dir=str(tmp_path / "pairs"), num_steps=1)
    policy = Policy(dpo.init, lora=None, need_reference=True)
    starts_from_release(policy.transformer)
    generator = torch.Generator().manual_seed(0)
    embeds = torch.randn(2, 5, 64, generator=generator)
    pairs = PairBatch(
        torch.randn(2, 16, 8, 8, generator=generator),
        torch.randn(2, 16, 8, 8, generator=generator),
        PromptEmbeds(embeds, torch.ones(2, 5, dtype=torch.long)),
    )
    optimizer = torch.optim.AdamW(policy.trainable_parameters(), lr=1e-3)
    assert torch.isfinite(torch.tensor(dpo_step(policy.model, optimizer, policy.reference, pairs, beta=100.0)["loss"]))
    starts_from_release(policy.frozen_reference)
    assert VaeFinetuneConfig(init=released_folder).weights_dir == str(pathlib.Path(released_folder).resolve())

    # A folder without its VAE is refused by every job, naming the part; so is a part of another class and a shard
    # the index lists but the folder lacks.
    broken = tmp_path / "no-vae"
    shutil.copytree(released_folder, broken)
    shutil.rmtree(broken / "vae")
    jobs = {
        "sft": lambda folder: PretrainConfig.model_validate({**sft, "init": str(folder)}),
        "lora": lambda folder: _lora_config(str(folder)),
        "dpo": lambda folder: DpoConfig(init=str(folder), run_name="d", pairs_dir="p", num_steps=1),
        "vae": lambda folder: VaeFinetuneConfig(init=str(folder)),
    }
    for build in jobs.values():
        with pytest.raises(ValueError, match=r"vae/ \(folder\)"):
            build(broken)
    shutil.copytree(pathlib.Path(released_folder) / "vae", broken / "vae")
    index = json.loads((broken / "model_index.json").read_text())
    (broken / "model_index.json").write_text(json.dumps({**index, "vae": ["diffusers", "AutoencoderKLWan"]}))
    with pytest.raises(ValueError, match="vae .model_index.json names AutoencoderKLWan"):
        jobs["lora"](broken)
    (broken / "model_index.json").write_text(json.dumps(index))
    next((broken / "transformer").glob("*-00002-of-*.safetensors")).unlink()
    with pytest.raises(ValueError, match=r"transformer/diffusion_pytorch_model-00002-of-\d+\.safetensors \(listed"):
        jobs["sft"](broken)


@pytest.mark.parametrize("kind", ["int8", "float8"])
def test_lora_on_a_quantised_base(released_folder, memorized, kind):
    """lora.quantize: the blocks' frozen linear layers hold torchao's weight-only quantised tensors (about a quarter
    of their fp32 bytes), the model computes what the full-precision one computes to within the quantisation error,
    only the adapters train, and the adapter exports as from a full-precision base."""
    from models.lora import tensor_bytes

    plain = build_model(_lora_config(released_folder), single_process(), restoring=False)
    config = _lora_config(released_folder, quantize=kind)
    model = build_model(config, single_process(), restoring=False)
    blocks = dict(model.transformer_blocks.named_parameters())
    frozen = [name for name, param in blocks.items() if param.ndim == 2 and not param.requires_grad]
    assert frozen and all(hasattr(blocks[name], "dequantize") for name in frozen)
    plain_blocks = dict(plain.transformer_blocks.named_parameters())
    full = sum(tensor_bytes(plain_blocks[name]) for name in frozen)
    assert sum(tensor_bytes(blocks[name]) for name in frozen) < 0.3 * full

    targets = memorized["targets"]
    prompt = torch.randn(2, 6, 64, generator=torch.Generator().manual_seed(2))
    batch = {"latents": targets, "text_embeds": prompt, "text_mask": torch.ones(2, 6, dtype=torch.long)}
    from models.packing import img_shapes, pack_latents
    from models.sampler import predict_velocity

    tokens, sigma = pack_latents(targets), torch.tensor([0.5, 0.5])
    embeds = PromptEmbeds(prompt, batch["text_mask"])
    with torch.no_grad():
        reference = predict_velocity(plain, tokens, sigma, embeds, img_shapes(2, 8, 8))
        quantised = predict_velocity(model, tokens, sigma, embeds, img_shapes(2, 8, 8))
    assert (quantised - reference).abs().max() < 0.05 * reference.abs().max()
    optimizer = torch.optim.AdamW(trainable_parameters(model), lr=1e-2)
    before = {name: blocks[name].dequantize().clone() for name in frozen}
    state = TrainState()
    for _ in range(3):
        _train_step(model, optimizer, [batch], state, config, 1.0, single_process())
    assert all(torch.equal(blocks[name].dequantize(), before[name]) for name in frozen)
    assert any(float(p.abs().max()) > 0 for n, p in model.named_parameters() if ".lora_B." in n)
    assert export_adapter(model, pathlib.Path(memorized["adapter"]).parent / f"adapter-{kind}", rank=0).is_file()
    with pytest.raises(ValueError, match="one worker"):
        PretrainConfig.model_validate({**config.model_dump(), "num_workers": 2})


def test_lora_recipes_and_edit_batches(released_folder, tmp_path):
    """The one-GPU recipe of the published model reads and becomes a pretraining config (LoRA, checkpointing every
    block, the frozen base in bf16 under FSDP on one worker); an edit batch (source latents) trains the adapters as a
    text-to-image batch does."""
    from models.config import load_config
    from training.finetune import FinetuneConfig, pretrain_config

    recipe = pathlib.Path(__file__).resolve().parents[2] / "configs" / "lora_qwen_image.yaml"
    config = load_config(FinetuneConfig, recipe, [f"init={released_folder}", f"output_dir={tmp_path}"])
    pretrain = pretrain_config(config, config.init, ["a prompt"])
    assert pretrain.lora.rank == 16 and not pretrain.lora.merge and pretrain.phases[0].resolution == 1328
    assert pretrain.parallel.strategy == "fsdp" and pretrain.parallel.activation_checkpointing == 1
    assert pretrain.frozen_dtype == "bfloat16" and pretrain.use_gpu
    with pytest.raises(ValueError, match="one worker"):
        pretrain_config(
            config.model_copy(update={"lora": config.lora.model_copy(update={"quantize": "int8"})}), config.init, []
        )
    # Repeats per folder weigh the folders' stored source names against each other (the phase's mixture).
    folders = [{"path": "/data/a", "repeats": 2}, {"path": "/data/b"}]
    two = load_config(FinetuneConfig, recipe, [f"init={released_folder}", f"images={json.dumps(folders)}"])
    mixture = pretrain_config(two, two.init, ["p"]).phases[0].mixture
    assert mixture == {"source": {"folder0-a": 2.0, "folder1-b": 1.0}}

    model = build_model(_lora_config(released_folder), single_process(), restoring=False)
    optimizer = torch.optim.AdamW(trainable_parameters(model), lr=1e-2)
    generator = torch.Generator().manual_seed(4)
    latents, source = torch.randn(2, 16, 8, 8, generator=generator), torch.randn(2, 16, 8, 8, generator=generator)
    edit = {"latents": latents, "source_latents": source, "text_embeds": torch.randn(2, 5, 64, generator=generator)}
    edit["text_mask"] = torch.ones(2, 5, dtype=torch.long)
    loss, grad_norm = _train_step(
        model, optimizer, [edit], TrainState(), _lora_config(released_folder), 1.0, single_process()
    )
    assert torch.isfinite(torch.tensor(loss)) and grad_norm > 0
    assert any(float(p.abs().max()) > 0 for n, p in model.named_parameters() if ".lora_B." in n)
