"""The latent store's header (store/header.py): written at the first commit, refused to writers and
trainers with other settings."""

from __future__ import annotations

import threading

import pytest

from pipelines.encode import EncodeConfig, store_header
from store.header import StoreHeaderMismatch, ensure_header, read_header


def test_store_header_mismatch_is_refused(tmp_path):
    from models.presets import vae_config
    from pipelines.produce import encode_pass
    from training.config import PretrainConfig
    from training.pretrain import check_store

    store = tmp_path / "store"
    nano = EncodeConfig(preset="nano", resolutions=[64], store_dir=str(store))
    written = ensure_header(store, store_header(nano))
    assert read_header(store) == written and written["encoder_preset"] == "nano" and written["resolutions"] == [64]
    ensure_header(store, store_header(nano))  # the same settings append

    # Another vision area for edit rows.
    with pytest.raises(StoreHeaderMismatch, match=r"edit_vision_area: the store has 147456, given 65536"):
        ensure_header(store, store_header(nano.model_copy(update={"edit_vision_area": 256 * 256})))
    # Another VAE: the tiny preset's. The producers' encode pass refuses it before reading anything (no labels
    # file exists here).
    with pytest.raises(StoreHeaderMismatch, match="latents_mean") as error:
        encode_pass(tmp_path / "scored", tmp_path / "labels.parquet", nano.model_copy(update={"preset": "tiny"}))
    assert "encoder_weights" in str(error.value) and "encoder_preset: the store has 'nano', given 'tiny'" in str(
        error.value
    )

    # A trainer whose model's VAE normalises latents otherwise fails, naming both values.
    phases = [{"name": "p", "num_steps": 1, "resolution": 64}]
    tiny_run = PretrainConfig(preset="tiny", store_dir=str(store), output_dir=str(tmp_path / "run"), phases=phases)
    with pytest.raises(StoreHeaderMismatch, match="latents_mean") as error:
        check_store(tiny_run)
    message = str(error.value)
    assert repr(vae_config("nano")["latents_mean"]) in message and repr(vae_config("tiny")["latents_mean"]) in message
    nano_run = tiny_run.model_copy(update={"preset": "nano"})
    check_store(nano_run)  # the store's own model passes
    with pytest.raises(StoreHeaderMismatch, match=r"resolutions \[256\]"):
        check_store(nano_run.model_copy(update={"phases": [tiny_run.phases[0].model_copy(update={"resolution": 256})]}))
    check_store(tiny_run.model_copy(update={"store_dir": str(tmp_path / "no-header")}))  # an older store: unchecked


def test_edit_vision_area_travels_from_the_store_to_serving(tmp_path):
    """The vision area is set once, where edits are encoded: a trainer takes it from the store's header (a different
    one is refused, naming both), its exports record it, and serving takes it from the checkpoint (a different one
    is refused, naming both)."""
    from models.checkpoint import trained_edit_vision_area, write_model_index
    from serving.config import parse_settings
    from training.config import PretrainConfig
    from training.pretrain import with_edit_vision_area

    store = tmp_path / "store"
    ensure_header(store, store_header(EncodeConfig(preset="tiny", resolutions=[64], edit_vision_area=256 * 256)))
    phases = [{"name": "p", "num_steps": 1, "resolution": 64}]
    run = PretrainConfig(preset="tiny", store_dir=str(store), output_dir=str(tmp_path / "run"), phases=phases)
    assert with_edit_vision_area(run).samples.edit_vision_area == 256 * 256
    other = run.model_copy(update={"samples": run.samples.model_copy(update={"edit_vision_area": 384 * 384})})
    with pytest.raises(StoreHeaderMismatch, match=r"samples.edit_vision_area is 147456, but .* at 65536 pixels"):
        with_edit_vision_area(other)
    older = run.model_copy(update={"store_dir": str(tmp_path / "no-header")})
    assert with_edit_vision_area(older).samples.edit_vision_area == 384 * 384  # no header: the default

    checkpoint = tmp_path / "export"
    checkpoint.mkdir()
    write_model_index(checkpoint, "tiny", ["transformer"], {"edit_vision_area": 256 * 256})  # as training.loop does
    assert trained_edit_vision_area(checkpoint) == 256 * 256
    assert parse_settings({"model": {"checkpoint": str(checkpoint)}}).edit.vision_area == 256 * 256
    with pytest.raises(ValueError, match=r"edit.vision_area is 147456, but the checkpoint .* at 65536 pixels"):
        parse_settings({"model": {"checkpoint": str(checkpoint)}, "edit": {"vision_area": 384 * 384}})
    assert parse_settings({}).edit.vision_area == 384 * 384  # no checkpoint: the default


def test_concurrent_first_writers_agree_on_one_header(tmp_path):
    """Writers that start at once: one header is written; the one with other settings is refused."""
    headers = [store_header(EncodeConfig(preset="tiny", resolutions=[64]))] * 4
    headers.append(store_header(EncodeConfig(preset="tiny", resolutions=[64, 128])))
    outcomes: list = [None] * len(headers)

    def write(index: int) -> None:
        try:
            outcomes[index] = ensure_header(tmp_path, headers[index])
        except StoreHeaderMismatch as error:
            outcomes[index] = error

    threads = [threading.Thread(target=write, args=(index,)) for index in range(len(headers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    refused = [outcome for outcome in outcomes if isinstance(outcome, StoreHeaderMismatch)]
    assert len(refused) in (1, 4)  # the odd one out, or (had it won the race) the other four
    assert sorted(path.name for path in tmp_path.iterdir()) == ["_store.json"]  # no temporary file left behind
