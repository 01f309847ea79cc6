"""Preference pairs for DPO, stored like other samples: a latent store (Parquet shards, manifest, atomic commits).

One row per pair: the store's identity, caption and condition columns (``sample_id`` is the pair id), the
winner's latents in the store's ``latents_<res>`` / ``height_<res>`` / ``width_<res>`` columns and the loser's in
``loser_latents_<res>`` (same encoding: float16 bytes), where the preference came from (``reward:<terms>`` or
``human:<file>``) and, for reward pairs, both rewards. Two Ray Data jobs build them:

- ``RewardPairStage``: K ODE samples per prompt from the current model, scored by a reward; best vs worst;
- ``LabelPairStage``: a JSONL / CSV file of (prompt, winner image, loser image), encoded with the VAE.

Workers read pairs with ``read_pairs`` and batch them by shape with ``pair_batches``.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import pathlib
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import ray.data
import torch

from models.prompt_embeds import PromptEmbeds
from models.ray_runtime import local_read_blocks
from pipelines.pools import map_stage
from store import columns as C
from store.batches import decode_batch
from store.buckets import bucket_size, nearest_bucket
from store.reader import read_table
from store.writer import LatentStoreSink
from training.post_training.config import DpoConfig, LabelPairsConfig, RewardPairsConfig, prompt_list
from training.post_training.dpo import PairBatch


def pair_id(*parts: object) -> str:
    """A stable id from what defines the pair: rebuilding the same pairs commits nothing twice."""
    return hashlib.blake2b("\0".join(str(part) for part in parts).encode(), digest_size=12).hexdigest()


def unit_hash(value: str, seed: int = 0) -> float:
    digest = hashlib.blake2b(f"{seed}:{value}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64


@dataclasses.dataclass(frozen=True)
class Pair:
    """One preference pair before it is stored: the prompt's embedding [L, D] and both images' latents [16, h, w]."""

    id: str
    bucket: str
    caption: str
    embeds: np.ndarray
    winner: np.ndarray
    loser: np.ndarray
    source: str  # where the preference came from: reward:<terms> or human:<labels file>
    reward_winner: float = np.nan
    reward_loser: float = np.nan


def pair_table(pairs: list[Pair], resolution: int) -> pa.Table:
    size = [bucket_size(pair.bucket, resolution) for pair in pairs]
    return pa.table(
        {
            C.SAMPLE_ID: pa.array([pair.id for pair in pairs], pa.string()),
            C.SOURCE: pa.array([pair.source for pair in pairs], pa.string()),
            C.BUCKET: pa.array([pair.bucket for pair in pairs], pa.string()),
            C.CAPTION: pa.array([pair.caption for pair in pairs], pa.string()),
            C.TEXT_EMBEDS: pa.array([C.tensor_bytes(pair.embeds) for pair in pairs], pa.binary()),
            C.TEXT_LEN: pa.array([pair.embeds.shape[0] for pair in pairs], pa.int32()),
            C.TEXT_DIM: pa.array([pair.embeds.shape[1] for pair in pairs], pa.int32()),
            C.latents_column(resolution): pa.array([C.tensor_bytes(pair.winner) for pair in pairs], pa.binary()),
            C.loser_latents_column(resolution): pa.array([C.tensor_bytes(pair.loser) for pair in pairs], pa.binary()),
            C.height_column(resolution): pa.array([height for _, height in size], pa.int32()),
            C.width_column(resolution): pa.array([width for width, _ in size], pa.int32()),
            C.PREFERENCE_SOURCE: pa.array([pair.source for pair in pairs], pa.string()),
            C.REWARD_WINNER: pa.array([pair.reward_winner for pair in pairs], pa.float64()),
            C.REWARD_LOSER: pa.array([pair.reward_loser for pair in pairs], pa.float64()),
        }
    )


class RewardPairStage:
    """Ray Data actor: prompts -> (best, worst) of ``images_per_prompt`` samples under a reward."""

    def __init__(self, checkpoint: str, base_weights_dir: str | None, settings: dict, resolution: int):
        from models.generation import TextToImage
        from training.post_training.rewards import build_reward

        self.settings = RewardPairsConfig.model_validate(settings)
        self.generator = TextToImage.from_checkpoint(checkpoint, weights_dir=base_weights_dir)
        self.reward = build_reward(self.settings.rewards)
        self.resolution = resolution
        self.width, self.height = bucket_size(self.settings.bucket, resolution)
        self.source = "reward:" + "+".join(self.reward.terms)
        self.prompts_done = self.pairs_kept = 0  # this actor's, printed to its worker log after each batch

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        from training.post_training.rewards import Generated

        count = self.settings.images_per_prompt
        rows = []
        for prompt, index in zip(batch["prompt"], batch["index"], strict=True):
            prompts = [str(prompt)] * count
            seeds = [(self.settings.seed * 1_000_003 + int(index)) * count + k for k in range(count)]
            latents = self.generator.generate_latents(
                prompts,
                height=self.height,
                width=self.width,
                num_steps=self.settings.num_steps,
                true_cfg_scale=self.settings.true_cfg_scale,
                seeds=seeds,
            )
            images = self.generator.decode(latents) if self.reward.needs_images else None
            scores = self.reward(Generated(prompts, images, latents))
            best, worst = int(np.argmax(scores)), int(np.argmin(scores))
            if scores[best] - scores[worst] <= self.settings.min_margin:
                continue  # no preference between these samples
            rows.append(
                Pair(
                    id=pair_id(self.source, prompt, seeds[best], seeds[worst]),
                    bucket=self.settings.bucket,
                    caption=str(prompt),
                    embeds=self.generator.encode([str(prompt)]).unpadded()[0].float().cpu().numpy(),
                    winner=latents[best].float().cpu().numpy(),
                    loser=latents[worst].float().cpu().numpy(),
                    source=self.source,
                    reward_winner=float(scores[best]),
                    reward_loser=float(scores[worst]),
                )
            )
        self.prompts_done += len(batch["prompt"])
        self.pairs_kept += len(rows)
        print(f"[pairs] {self.prompts_done} prompts sampled here, {self.pairs_kept} pairs kept", flush=True)
        return pair_table(rows, self.resolution)


class LabelPairStage:
    """Ray Data actor: (prompt, winner path, loser path) -> encoded pair; both images cropped to the winner's
    bucket at the pair resolution, as the producers crop."""

    def __init__(self, preset: str, base_weights_dir: str | None, resolution: int, source: str):
        from models.condition_encoder import ConditionEncoder
        from models.presets import build_components
        from models.vae import LatentVAE

        components = build_components(preset, weights_dir=base_weights_dir, parts=("vae", "text_encoder", "tokenizer"))
        self.vae = LatentVAE(components.vae, frame_convs="2d")  # as the producers encode (models/vae.py)
        self.encoder = ConditionEncoder(components.text_encoder, components.tokenizer)
        self.resolution, self.source = resolution, source

    def _image(self, path: str) -> tuple[np.ndarray, str]:
        """The decoded image and a digest of its bytes (the pair's id names the images, not where they lie)."""
        from pipelines.decode import DecodeConfig, decode_image

        data = pathlib.Path(path).read_bytes()
        decoded = decode_image(data, DecodeConfig(analysis_short_side=1 << 20))
        if not decoded.ok:
            raise ValueError(f"label image {path} cannot be decoded ({decoded.drop_reason})")
        return decoded.image, hashlib.blake2b(data, digest_size=12).hexdigest()

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        from models.vae import images_to_tensor
        from pipelines.encode import cover_and_crop

        rows = []
        for prompt, winner_path, loser_path in zip(batch["prompt"], batch["winner"], batch["loser"], strict=True):
            (winner, winner_digest), (loser, loser_digest) = self._image(str(winner_path)), self._image(str(loser_path))
            bucket = nearest_bucket(winner.shape[1], winner.shape[0])
            width, height = bucket_size(bucket, self.resolution)
            pixels = np.stack([cover_and_crop(image, width, height) for image in (winner, loser)])
            latents = self.vae.encode(images_to_tensor(pixels)).float().cpu().numpy()
            rows.append(
                Pair(
                    # By content: the same labels re-read from a moved or copied folder commit nothing twice.
                    id=pair_id(self.source, prompt, winner_digest, loser_digest),
                    bucket=bucket,
                    caption=str(prompt),
                    embeds=self.encoder.encode([str(prompt)]).unpadded()[0].float().cpu().numpy(),
                    winner=latents[0],
                    loser=latents[1],
                    source=self.source,
                )
            )
        return pair_table(rows, self.resolution)


def read_label_file(path: str | pathlib.Path) -> list[dict[str, str]]:
    """Rows of ``prompt``, ``winner``, ``loser`` from JSONL or CSV (with a header); image paths made absolute."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise ValueError(f"label file {path} does not exist")
    if path.suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    else:
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    for number, row in enumerate(rows, 1):
        missing = {"prompt", "winner", "loser"} - set(row)
        if missing:
            raise ValueError(f"{path} row {number} lacks {sorted(missing)}: each row needs prompt, winner, loser")
        for key in ("winner", "loser"):
            image = pathlib.Path(row[key])
            row[key] = str(image if image.is_absolute() else (path.parent / image).resolve())
    return [{key: row[key] for key in ("prompt", "winner", "loser")} for row in rows]


def build_pairs(config: DpoConfig, preset: str) -> int:
    """Run the configured pair-building jobs into ``config.pairs_dir``; returns the rows submitted."""
    submitted = 0
    if config.from_reward is not None:
        prompts = prompt_list(config.from_reward.prompts, config.from_reward.prompts_file)
        items = [{"prompt": prompt, "index": index} for index, prompt in enumerate(prompts)]
        dataset = map_stage(
            ray.data.from_items(items, override_num_blocks=local_read_blocks()),
            RewardPairStage,
            config.from_reward.pool,
            checkpoint=config.init,
            base_weights_dir=config.base_weights_dir,
            settings=config.from_reward.model_dump(mode="json"),
            resolution=config.resolution,
        )
        dataset.write_datasink(LatentStoreSink(config.pairs_dir))
        submitted += len(items)
    if config.from_labels is not None:
        labels: LabelPairsConfig = config.from_labels
        items = read_label_file(labels.path)
        dataset = map_stage(
            ray.data.from_items(items, override_num_blocks=local_read_blocks()),
            LabelPairStage,
            labels.pool,
            preset=preset,
            base_weights_dir=config.base_weights_dir,
            resolution=config.resolution,
            source=f"human:{pathlib.Path(labels.path).name}",
        )
        dataset.write_datasink(LatentStoreSink(config.pairs_dir))
        submitted += len(items)
    return submitted


def read_pairs(pairs_dir: str | pathlib.Path, resolution: int) -> pa.Table:
    """Every committed pair at ``resolution`` (pairs are few next to the pretraining store: read whole)."""
    table = read_table(pairs_dir, resolution, extra_columns=[C.loser_latents_column(resolution), C.PREFERENCE_SOURCE])
    if table.num_rows == 0:
        raise ValueError(f"no preference pairs at resolution {resolution} in {pairs_dir}: build them first")
    return table


def split_pairs(table: pa.Table, eval_fraction: float, seed: int = 0) -> tuple[pa.Table, pa.Table]:
    """(train, held out): a pair is held out when the hash of its id falls below ``eval_fraction``."""
    held = np.array([unit_hash(pid, seed) < eval_fraction for pid in table.column(C.SAMPLE_ID).to_pylist()])
    return table.filter(pa.array(~held)), table.filter(pa.array(held))


def decode_pairs(table: pa.Table, resolution: int) -> PairBatch:
    """Rows of one bucket -> a ``PairBatch`` (float32 latents, padded prompt embeddings)."""
    winner = decode_batch(table, resolution)
    loser_table = table.set_column(
        table.schema.get_field_index(C.latents_column(resolution)),
        C.latents_column(resolution),
        table.column(C.loser_latents_column(resolution)),
    )
    loser = decode_batch(loser_table, resolution)[C.LATENTS]
    prompt = PromptEmbeds(winner[C.TEXT_EMBEDS].float(), winner[C.TEXT_MASK])
    return PairBatch(winner=winner[C.LATENTS].float(), loser=loser.float(), prompt=prompt)


def pair_batches(
    table: pa.Table,
    batch_size: int,
    resolution: int,
    *,
    rng: np.random.Generator,
    drop_last: bool = True,
    skip: int = 0,
) -> Iterator[PairBatch]:
    """Shuffled batches of one bucket each (one shape); the order is a pure function of ``rng``; the first
    ``skip`` batches are passed over undecoded (resuming inside an epoch)."""
    buckets = np.asarray(table.column(C.BUCKET).to_pylist())
    chunks = []
    for bucket in sorted(set(buckets.tolist())):
        rows = rng.permutation(np.flatnonzero(buckets == bucket))
        stop = len(rows) - len(rows) % batch_size if drop_last else len(rows)
        chunks += [rows[start : start + batch_size] for start in range(0, stop, batch_size)]
    for index in rng.permutation(len(chunks))[skip:]:
        yield decode_pairs(table.take(pa.array(chunks[index])), resolution)


def num_batches(table: pa.Table, batch_size: int) -> int:
    """Full batches ``pair_batches`` yields per pass (``drop_last``)."""
    _, counts = np.unique(np.asarray(table.column(C.BUCKET).to_pylist()), return_counts=True)
    return int((counts // batch_size).sum())


def to_device(batch: PairBatch, device: torch.device | str) -> PairBatch:
    return PairBatch(batch.winner.to(device), batch.loser.to(device), batch.prompt.to(device))
