"""Ray Data stages of the evaluation: ``__init__`` loads the model once per actor, ``__call__`` maps a numpy batch.

Images travel as uint8 ``[B, H, W, 3]`` columns until ``to_png`` turns them into PNG bytes for the Parquet rows.
"""

from __future__ import annotations

import cv2
import numpy as np

from store import columns as C
from training.evaluation.config import MODEL_LIST, GenerationConfig, ModelSpec
from training.evaluation.images import ordinary_images, render_text, text_rich_images
from training.evaluation.text_accuracy import CLIP, SCENES, score

TEXT_SETS: dict[str, str] = {"text_en": "en", "text_zh": "zh"}
ORDINARY = "ordinary"


def render_vae_inputs(batch: dict[str, np.ndarray], resolution: int, seed: int, folder: str | None) -> dict:
    """Rows ``(set, index)`` -> the image (and the text drawn in it) that the VAE will reconstruct."""
    images, texts = [], []
    for name, index in zip(batch[C.EVAL_SET], batch[C.EVAL_INDEX], strict=True):
        if name == ORDINARY:
            images.append(ordinary_images(1, resolution, seed=seed, folder=folder, start=int(index))[0])
            texts.append("")
        else:
            rendered, drawn = text_rich_images(1, resolution, TEXT_SETS[name], seed=seed, start=int(index) * 64)
            images.append(rendered[0])
            texts.append(drawn[0])
    return {**batch, C.EVAL_IMAGE: np.stack(images), C.EVAL_TEXT: np.array(texts, dtype=object)}


def load_vae(spec: ModelSpec):
    """The model's VAE: the checkpoint's own when it holds one (a decoder fine-tuning run), else its preset's."""
    from models.checkpoint import read_metadata
    from models.presets import build_components

    if spec.checkpoint and "vae" in read_metadata(spec.checkpoint).get("parts", ()):
        preset = read_metadata(spec.checkpoint).get("preset", spec.preset)
        return build_components(preset, weights_dir=spec.checkpoint, parts=("vae",)).vae
    return build_components(spec.preset, weights_dir=spec.weights_dir, parts=("vae",)).vae


class VaeReconstruction:
    """Encode -> decode with the model's VAE; PSNR and SSIM per row (``models.image_metrics`` conventions)."""

    def __init__(self, spec_json: str):
        from models.vae import LatentVAE

        self.vae = LatentVAE(load_vae(ModelSpec.model_validate_json(spec_json)))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from models.image_metrics import psnr, ssim, uint8_to_unit
        from models.vae import images_to_tensor, tensor_to_images

        reconstruction = tensor_to_images(self.vae.decode(self.vae.encode(images_to_tensor(batch[C.EVAL_IMAGE]))))
        first, second = uint8_to_unit(batch[C.EVAL_IMAGE]), uint8_to_unit(reconstruction)
        return {
            **batch,
            C.EVAL_RECONSTRUCTION: reconstruction,
            C.EVAL_PSNR: psnr(first, second).numpy(),
            C.EVAL_SSIM: ssim(first, second).numpy(),
        }


class Generate:
    """Prompts -> images with each row's model (the ``model`` column names one of the run's ``ModelSpec``), by
    ``TextToImage``, or for the reference the expected text drawn plainly.

    One actor serves every model of a run, holding one at a time: the rows come ordered by model, so an actor loads
    each model about once, and a run of several models pays the actor's start (imports, the pipeline) once instead
    of once a model."""

    def __init__(self, specs_json: str, generation_json: str):
        self.specs = {spec.name: spec for spec in MODEL_LIST.validate_json(specs_json)}
        self.config = GenerationConfig.model_validate_json(generation_json)
        self.loaded: str | None = None
        self.generator = None

    def _load(self, name: str) -> None:
        if name == self.loaded:
            return
        if name not in self.specs:
            raise ValueError(f"row of model {name!r}, which is not one of this run's models {sorted(self.specs)}")
        if self.generator is not None:  # the previous model goes before the next one comes
            import gc

            import torch

            self.generator = None
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        spec = self.specs[name]
        if not spec.reference:
            from models.generation import TextToImage

            if spec.checkpoint:
                self.generator = TextToImage.from_checkpoint(spec.checkpoint, weights_dir=spec.weights_dir)
            else:
                self.generator = TextToImage.from_preset(spec.preset, weights_dir=spec.weights_dir)
        self.loaded = name

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Each row with its model at its own ``size`` (one generator call per model and size); images come back at
        the largest size of the batch (smaller ones enlarged, nearest neighbour) so that the column has one shape."""
        sizes = [int(size) for size in batch[C.EVAL_SIZE]]
        models = [str(name) for name in batch[C.EVAL_MODEL]]
        images: list[np.ndarray | None] = [None] * len(sizes)
        for name in dict.fromkeys(models):
            self._load(name)
            for size in sorted({size for size, model in zip(sizes, models, strict=True) if model == name}):
                rows = [i for i in range(len(sizes)) if sizes[i] == size and models[i] == name]
                for i, image in zip(rows, self._generate(batch, rows, size), strict=True):
                    images[i] = image
        largest = max(sizes)
        images = [
            image
            if image.shape[0] == largest
            else cv2.resize(image, (largest, largest), interpolation=cv2.INTER_NEAREST)
            for image in images
        ]
        return {**batch, C.EVAL_IMAGE: np.stack(images)}

    def _generate(self, batch: dict[str, np.ndarray], rows: list[int], size: int) -> np.ndarray:
        # The reference: each row's expected scene or text, drawn as its own task says (a block's rows mix tasks).
        if self.generator is None:
            from pipelines.synth import shapes

            drawn = []
            for i in rows:
                text = str(batch[C.EVAL_EXPECTED][i] or batch[C.EVAL_PROMPT][i])
                scene = batch[C.EVAL_TASK][i] == SCENES
                drawn.append(
                    shapes.render_scene(shapes.parse_caption(text), size) if scene else render_text(text, size)
                )
            return np.stack(drawn)
        return self.generator(
            [str(batch[C.EVAL_PROMPT][i]) for i in rows],
            height=size,
            width=size,
            num_steps=self.config.num_steps,
            true_cfg_scale=self.config.true_cfg_scale,
            seeds=[int(batch[C.EVAL_SEED][i]) for i in rows],
        )


class OcrScores:
    """OCR of each image (reading order). Generated rows get their task's score; VAE rows (with a reconstruction)
    get the normalised edit distance between what OCR reads in the reconstruction and in the original."""

    def __init__(self):
        from models.ocr import OcrEngine

        self.engine = OcrEngine()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from pipelines.synth.verify import normalise, read_text

        if C.EVAL_RECONSTRUCTION in batch:
            read_original, read_reconstruction, edits = [], [], []
            for name, original, reconstruction in zip(
                batch[C.EVAL_SET], batch[C.EVAL_IMAGE], batch[C.EVAL_RECONSTRUCTION], strict=True
            ):
                first = second = ""
                if name != ORDINARY:
                    first, second = read_text(self.engine, original), read_text(self.engine, reconstruction)
                read_original.append(first)
                read_reconstruction.append(second)
                edits.append(np.nan if name == ORDINARY else _normalised_edit(normalise(first), normalise(second)))
            return {
                **batch,
                C.EVAL_READ_ORIGINAL: np.array(read_original, dtype=object),
                C.EVAL_READ_RECONSTRUCTION: np.array(read_reconstruction, dtype=object),
                C.EVAL_OCR_EDIT: np.array(edits, dtype=np.float64),
            }
        reads, scores = [], []
        for task, expected, image in zip(batch[C.EVAL_TASK], batch[C.EVAL_EXPECTED], batch[C.EVAL_IMAGE], strict=True):
            if task == SCENES:  # the judge scores these (judge_scores)
                reads.append("")
                scores.append(np.nan)
                continue
            read = "" if task == CLIP else read_text(self.engine, image)
            reads.append(read)
            scores.append(score(str(task), str(expected), read))
        return {**batch, C.EVAL_READ: np.array(reads, dtype=object), C.EVAL_SCORE: np.array(scores, dtype=np.float64)}


def _normalised_edit(original: str, reconstruction: str) -> float:
    """Edit distance over the length of the original's reading (0: same text read; 1 or more: nothing alike)."""
    from models.ocr import edit_distance

    return edit_distance(original, reconstruction) / max(1, len(original))


class ClipScores:
    """CLIP score of each image with its prompt: ``100 * max(cos, 0)`` (the torchmetrics convention)."""

    def __init__(self, clip_json: str):
        from models.clip import ClipConfig, ClipModel

        self.model = ClipModel(ClipConfig.model_validate_json(clip_json))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cosine = self.model.similarity(list(batch[C.EVAL_IMAGE]), [str(prompt) for prompt in batch[C.EVAL_PROMPT]])
        return {**batch, C.EVAL_CLIP_SCORE: 100 * np.maximum(cosine, 0).astype(np.float64)}


JUDGED = ("colour", "shape", "position", "count")


def judge_scores(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Shape-scene rows: the judge's verdict per attribute (``judge_<attribute>``, 1.0 / 0.0), ``score`` = all right,
    and ``read`` = what it found; other rows get NaN in the judge's columns. An image enlarged to the batch's size is
    judged at its own size (``size``)."""
    from training.evaluation.judge import judge

    count = len(batch[C.EVAL_TASK])
    columns = {C.judge_column(name): np.full(count, np.nan) for name in JUDGED}
    # Batches of shape scenes only skip the OCR stage (``run.needs_ocr``): they arrive without its columns.
    scores = np.asarray(batch.get(C.EVAL_SCORE, np.full(count, np.nan)), dtype=np.float64).copy()
    reads = np.asarray(batch.get(C.EVAL_READ, np.full(count, "", dtype=object)), dtype=object).copy()
    for i, task in enumerate(batch[C.EVAL_TASK]):
        if task != SCENES:
            continue
        image = batch[C.EVAL_IMAGE][i]
        size = int(batch[C.EVAL_SIZE][i])
        if image.shape[0] != size:
            image = cv2.resize(image, (size, size), interpolation=cv2.INTER_NEAREST)
        verdict = judge(image, str(batch[C.EVAL_PROMPT][i]))
        for name in JUDGED:
            columns[C.judge_column(name)][i] = float(getattr(verdict, name))
        scores[i] = float(verdict.overall)
        reads[i] = verdict.label()
    return {**batch, **columns, C.EVAL_SCORE: scores, C.EVAL_READ: reads}


PNG_COLUMNS = {C.EVAL_IMAGE: C.EVAL_IMAGE_PNG, C.EVAL_RECONSTRUCTION: C.EVAL_RECONSTRUCTION_PNG}


def to_png(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Image columns -> PNG bytes columns (``<name>_png``), for Parquet rows a person can open."""
    out = {}
    for key, value in batch.items():
        if key in PNG_COLUMNS:
            out[PNG_COLUMNS[key]] = np.array(
                [cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))[1].tobytes() for image in value],
                dtype=object,
            )
        else:
            out[key] = value
    return out
