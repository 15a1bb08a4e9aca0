"""The trainer on multimodal synthetic batches (images, audio, video + placeholders)."""
from __future__ import annotations

import pytest
import numpy as np

from model.config import model_config
from model.dataset_config import DatasetConfig
from model.metric_writers import read_jsonl
from model.synthetic_data import MEDIA_IDS, synthetic_dataset_fn
from tests import train_testlib


def test_synthetic_media_rows_follow_the_contract():
    mc = model_config("tiny")
    cfg = DatasetConfig("synthetic", {"targets": 128}, batch_size=4)
    batch = next(synthetic_dataset_fn(cfg, 0, 1, 0, model_cfg=mc,
                                      media_per_row={"image": 1, "audio": 1, "video": 1}))
    assert batch["images"].shape == (4, 1, 32, 32, 3) and batch["images"].dtype == np.uint8
    assert batch["videos"].shape == (4, 1, 4, 32, 32, 3)
    assert batch["audio"].shape == (4, 1, 128, 80)
    targets = batch["decoder_target_tokens"]
    for r in range(4):
        assert (targets[r] == 3).sum() == mc.image.slots_per_item
        assert (targets[r] == 9).sum() == mc.video.slots_per_item
        assert (targets[r] == 6).sum() == mc.audio.slots(int(batch["audio_lengths"][r, 0]))
    media = np.isin(targets, list(MEDIA_IDS))
    assert (batch["decoder_loss_weights"][media] == 0).all()
    assert (batch["decoder_loss_weights"][~media & (targets > 0)] == 1).all()


@pytest.mark.slow
def test_multimodal_training_with_microbatches_on_a_mesh(tmp_path):
    args = train_testlib.cli_args(tmp_path, 2, length=128, bindings=[
        "model_config.overrides = {'d_model': 32, 'num_layers': 1, 'num_heads': 2, "
        "'num_kv_heads': 1, 'head_dim': 16, 'd_ff': 64, 'vocab_size': 512, 'max_len': 128}",
        "synthetic_dataset_fn.model_cfg = @model_config()",
        "synthetic_dataset_fn.media_per_row = {'image': 1, 'audio': 1, 'video': 1}",
        "Partitioner.mesh_shape = (2, 2, 2)", "train.num_microbatches = 2",
        "train.log_every = 1", "warmup_cosine_schedule.warmup_steps = 1"])
    result = train_testlib.train_in_process(args)
    rows = read_jsonl(tmp_path / "metrics.jsonl", "train")
    assert [r["step"] for r in rows] == [1, 2]
    assert all(np.isfinite(r["loss"]) for r in rows)
    assert result.state.params  # trained params came back
