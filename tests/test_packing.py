"""The multimodal packer: hand-checked rows, budgets, splitting and dropping."""
import numpy as np
import pytest

from pipelines import special_tokens as st
from tasks import packing

IMG, BI, EI = st.IMAGE_ID, st.BEGIN_IMAGE_ID, st.END_IMAGE_ID
AUD, BA, EA = st.AUDIO_ID, st.BEGIN_AUDIO_ID, st.END_AUDIO_ID


def image_example(tokens_before, k, tokens_after, value=7, size=2):
    return {"targets": np.array(tokens_before + [BI] + [IMG] * k + [EI] + tokens_after, np.int32),
            "image_bytes": [np.full((size, size, 3), value, np.uint8).tobytes()], "image_size": size}


def audio_example(frames, n_mels=3):
    k = -(-frames // 4)
    return {"targets": np.array([300, BA] + [AUD] * k + [EA], np.int32),
            "audio_bytes": [np.full((frames, n_mels), 1.5, np.float16).tobytes()], "audio_frames": [frames],
            "n_mels": n_mels}


def test_docstring_example():
    cfg = packing.PackingConfig(batch_size=1, length=13, max_images=2, image_size=2)
    (batch,) = packing.MultimodalPacker(cfg)([image_example([12], 4, [88, 731]), {"targets": [41, 70]}])
    assert batch["decoder_target_tokens"].tolist() == [[12, 4, 3, 3, 3, 3, 5, 88, 731, 1, 41, 70, 1]]
    assert batch["decoder_input_tokens"].tolist() == [[0, 12, 4, 3, 3, 3, 3, 5, 88, 731, 0, 41, 70]]
    assert batch["decoder_loss_weights"].tolist() == [[1, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1]]
    assert batch["decoder_segment_ids"].tolist() == [[1] * 10 + [2, 2, 2]]
    assert batch["decoder_positions"].tolist() == [list(range(10)) + [0, 1, 2]]
    assert batch["image_mask"].tolist() == [[True, False]]
    assert (batch["images"][0, 0] == 7).all() and (batch["images"][0, 1] == 0).all()
    assert set(batch) == {"decoder_target_tokens", "decoder_input_tokens", "decoder_loss_weights",
                          "decoder_segment_ids", "decoder_positions", "images", "image_mask"}


def test_media_follow_token_order_across_rows_and_budgets():
    cfg = packing.PackingConfig(batch_size=2, length=16, max_images=2, image_size=2)
    exs = [image_example([20], 2, [21], value=v) for v in (1, 2, 3)]  # 6 tokens + EOS = 7 each
    packer = packing.MultimodalPacker(cfg)
    (batch,) = packer(exs)
    # Row 0 holds two (2 images, 14 tokens), row 1 the third.
    assert batch["images"][0, :, 0, 0, 0].tolist() == [1, 2] and batch["images"][1, :, 0, 0, 0].tolist() == [3, 0]
    assert batch["image_mask"].tolist() == [[True, True], [True, False]]
    # Placeholder count per row == valid slots per row (the model's cumsum contract, K=2 per image).
    for b in range(2):
        assert (batch["decoder_input_tokens"][b] == IMG).sum() == 2 * batch["image_mask"][b].sum()
    assert packer.counts["segments"] == 3 and packer.counts["batches"] == 1


def test_never_loss_on_media_tokens():
    cfg = packing.PackingConfig(batch_size=1, length=64, max_audio=2, audio_frames=20, n_mels=3)
    (batch,) = packing.MultimodalPacker(cfg)([audio_example(9), audio_example(20)])
    tgt, w = batch["decoder_target_tokens"], batch["decoder_loss_weights"]
    assert not w[np.isin(tgt, [AUD, BA, EA])].any()
    assert w[(tgt != 0) & ~np.isin(tgt, [AUD, BA, EA])].all()
    assert batch["audio_lengths"].tolist() == [[9, 20]]
    assert batch["audio"].dtype == np.float16 and (batch["audio"][0, 0, 9:] == 0).all()


def test_long_text_split_and_media_dropped():
    cfg = packing.PackingConfig(batch_size=2, length=8, max_images=1, image_size=2)
    packer = packing.MultimodalPacker(cfg)
    batches = list(packer([{"targets": list(range(100, 119))},        # 19 + EOS -> 8, 8, 4
                           image_example([20] * 10, 2, []),            # 14 tokens > 8: dropped
                           image_example([20], 1, []),                 # fits
                           {**image_example([], 1, []), "image_bytes": [b"\0" * 12] * 2}]))  # 2 images > budget
    assert packer.counts["split_text"] == 1 and packer.counts["dropped_too_long"] == 1
    assert packer.counts["dropped_media_budget"] == 1
    tokens = np.concatenate([b["decoder_target_tokens"][b["decoder_segment_ids"] > 0] for b in batches])
    assert tokens[:20].tolist() == list(range(100, 119)) + [1]
    assert sum(b["image_mask"].sum() for b in batches) == 1


def test_audio_longer_than_slot_dropped():
    packer = packing.MultimodalPacker(packing.PackingConfig(batch_size=1, length=64, max_audio=1, audio_frames=8,
                                                            n_mels=3))
    assert list(packer([audio_example(9)])) == [] and packer.counts["dropped_media_too_long"] == 1


def test_no_pack_one_example_per_row():
    cfg = packing.PackingConfig(batch_size=2, length=8, pack=False)
    batches = list(packing.MultimodalPacker(cfg)([{"targets": [5]}, {"targets": [6]}, {"targets": [7]}]))
    assert len(batches) == 2 and batches[0]["decoder_segment_ids"].max(axis=1).tolist() == [1, 1]
    assert batches[1]["decoder_segment_ids"].max(axis=1).tolist() == [1, 0]  # padding row


def test_config_mismatch_is_a_clear_error():
    packer = packing.MultimodalPacker(packing.PackingConfig(batch_size=1, length=32, max_images=1, image_size=4))
    with pytest.raises(ValueError, match="image_size"):
        list(packer([image_example([1], 1, [], size=2)]))
    with pytest.raises(ValueError, match="batch_size"):
        packing.PackingConfig(batch_size=0, length=8)


def test_resume_mid_example_gives_the_same_batches():
    """Resuming at the example that closed a batch, from its `pending_unit`, with the saved counts,
    gives the remaining batches and counts of the uninterrupted run."""
    cfg = packing.PackingConfig(batch_size=2, length=8, max_images=1, image_size=2)
    examples = [{"targets": list(range(100, 100 + n))} for n in (19, 3, 12, 5, 30, 2)]
    examples[2:2] = [image_example([20], 1, []), image_example([20] * 9, 1, [])]  # fits; too long (dropped)
    position = [0]

    def feed():
        for i, example in enumerate(examples):
            position[0] = i
            yield example
        position[0] = len(examples)

    packer = packing.MultimodalPacker(cfg)
    batches, marks = [], []
    for batch in packer.pack(feed()):
        batches.append(batch)
        marks.append((position[0], packer.pending_unit, dict(packer.counts)))
    assert any(unit > 0 for _, unit, _ in marks) and packer.counts["dropped_too_long"] == 1
    for k, (i, unit, counts) in enumerate(marks):
        resumed = packing.MultimodalPacker(cfg)
        resumed.counts.update(counts)
        rest = list(resumed.pack(examples[i:], resume_units=unit))
        assert len(rest) == len(batches) - k - 1, k
        assert all(np.array_equal(a[key], b[key]) for a, b in zip(rest, batches[k + 1:]) for key in a), k
        assert resumed.counts == packer.counts, k


def test_drops_are_logged_every_n(caplog):
    packer = packing.MultimodalPacker(packing.PackingConfig(batch_size=1, length=64, max_audio=1, audio_frames=8,
                                                            n_mels=3), log_drops_every=3)
    with caplog.at_level("WARNING", logger="tapestry.packing"):
        list(packer([audio_example(9)] * 7))
    logged = [r.getMessage() for r in caplog.records]
    assert packer.counts["dropped_media_too_long"] == 7 and len(logged) == 3  # drops 1, 3 and 6
    assert "6 of 6 examples dropped so far" in logged[-1] and "dropped_media_too_long=6" in logged[-1]
