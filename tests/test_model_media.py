"""Media encoders: slot counts match pipelines/, embeddings land exactly at placeholders."""
import jax
import jax.numpy as jnp
import numpy as np

from model import config as mc
from model.config import model_config
from model.encoders import merge_media
from model.models import DecoderOnlyModel
from model.transformer import Transformer
from pipelines import media_slots, special_tokens


def test_ids_and_slot_formulas_match_pipelines():
    assert (mc.PAD_ID, mc.EOS_ID) == (special_tokens.PAD_ID, special_tokens.EOS_ID)
    for modality, ids in special_tokens.MODALITY_IDS.items():
        assert mc.PLACEHOLDER_IDS[modality] == ids[0]
    assert (mc.BEGIN_IMAGE_ID, mc.END_IMAGE_ID) == special_tokens.MODALITY_IDS["image"][1:]
    for name in ("tiny", "small", "base", "large_moe"):
        cfg = model_config(name)
        assert cfg.image.slots_per_item == media_slots.image_slots(cfg.image.image_size,
                                                                   cfg.image.patch_size)
        assert cfg.video.slots_per_item == media_slots.video_slots(
            cfg.video.num_frames, cfg.video.image_size, cfg.video.patch_size)
        for n in (1, 4, 5, 127, cfg.audio.max_frames):
            assert cfg.audio.slots(n) == media_slots.audio_slots(n)


def test_merge_media_cumsum_order():
    b, d = 2, 3
    slots = jnp.arange(2 * 2 * 3 * d, dtype=jnp.float32).reshape(b, 2, 3, d) + 100
    valid = jnp.array([[[True, True, True], [True, True, False]],   # 5 valid slots
                       [[False, False, False], [True, True, True]]])  # item 0 empty
    tokens = jnp.array([[7, 3, 3, 3, 8, 3, 3, 9], [3, 3, 3, 9, 9, 9, 9, 9]])
    x = jnp.zeros((b, 8, d))
    out = np.asarray(merge_media(x, tokens, "image", slots, valid))
    flat = np.asarray(slots).reshape(b, 6, d)
    np.testing.assert_array_equal(out[0, [1, 2, 3, 5, 6]], flat[0, [0, 1, 2, 3, 4]])
    np.testing.assert_array_equal(out[0, [0, 4, 7]], 0)
    np.testing.assert_array_equal(out[1, [0, 1, 2]], flat[1, [3, 4, 5]])
    np.testing.assert_array_equal(out[1, 3:], 0)


def _mm_batch(cfg, seed=0):
    """Row 0: text, an image (K slots), text, audio (ceil(n/4) slots); row 1: a video."""
    rng = np.random.default_rng(seed)
    ki = cfg.image.slots_per_item
    n_audio = 10
    ka = cfg.audio.slots(n_audio)
    kv = 2 * cfg.video.patches_per_frame  # 2 of num_frames frames present
    row0 = [0, 30, 31, 4] + [3] * ki + [5, 32, 7] + [6] * ka + [8, 33]
    row1 = [0, 40, 10] + [9] * kv + [11, 41]
    length = max(len(row0), len(row1)) + 2
    toks = np.zeros((2, length), np.int32)
    toks[0, :len(row0)], toks[1, :len(row1)] = row0, row1
    seg = (np.arange(length)[None] < np.array([[len(row0)], [len(row1)]])).astype(np.int32)
    s, v = cfg.image.image_size, cfg.video
    return {
        "decoder_input_tokens": toks, "decoder_target_tokens": np.roll(toks, -1, 1),
        "decoder_loss_weights": seg.astype(np.float32), "decoder_segment_ids": seg,
        "decoder_positions": np.tile(np.arange(length, dtype=np.int32), (2, 1)),
        "images": rng.integers(0, 255, (2, 1, s, s, 3), dtype=np.uint8),
        "image_mask": np.array([[True], [False]]),
        "audio": rng.normal(size=(2, 1, cfg.audio.max_frames, cfg.audio.num_mels)).astype(
            np.float16),
        "audio_lengths": np.array([[n_audio], [0]], np.int32),
        "videos": rng.integers(0, 255, (2, 1, v.num_frames, v.image_size, v.image_size, 3),
                               dtype=np.uint8),
        "video_lengths": np.array([[0], [2]], np.int32),
    }


def test_model_places_encodings_at_placeholders():
    cfg = model_config("tiny", {"vocab_size": 256, "num_layers": 1,
                                "audio.max_frames": 16})
    model = DecoderOnlyModel(cfg)
    batch = _mm_batch(cfg)
    params = model.init(jax.random.PRNGKey(0), batch)
    # Capture the decoder input embeddings right after the merge.
    module = Transformer(cfg)
    _, inter = module.apply({"params": params}, jnp.asarray(batch["decoder_input_tokens"]),
                            jnp.asarray(batch["decoder_segment_ids"]),
                            jnp.asarray(batch["decoder_positions"]),
                            {k: v for k, v in model_media(batch).items()},
                            capture_intermediates=lambda mdl, name: mdl.name in (
                                "encoders", "embed"))
    emb = np.asarray(inter["intermediates"]["embed"]["__call__"][0])
    enc = inter["intermediates"]["encoders"]["__call__"][0]
    merged = _merged_inputs(module, params, batch)
    toks = batch["decoder_input_tokens"]
    for modality, pid, row in (("image", 3, 0), ("audio", 6, 0), ("video", 9, 1)):
        slots, valid = (np.asarray(a) for a in enc[modality])
        want = slots[row].reshape(-1, cfg.d_model)[valid[row].reshape(-1)]
        where = np.nonzero(toks[row] == pid)[0]
        assert len(where) == len(want)
        np.testing.assert_allclose(merged[row, where], want, rtol=1e-6)
    text = ~np.isin(toks, [3, 6, 9])
    np.testing.assert_allclose(merged[text], emb[text], rtol=1e-6)
    # Placeholder targets never carry loss, even with weight 1 in the batch.
    loss_w = np.asarray(__import__("model.models", fromlist=["x"]).text_loss_weights(batch))
    assert not loss_w[np.isin(batch["decoder_target_tokens"], [3, 6, 9])].any()
    # Pixels move the logits only at or after the image (causal).
    other = dict(batch, images=255 - batch["images"])
    l1, _ = model.logits(params, batch)
    l2, _ = model.logits(params, other)
    first = int(np.nonzero(toks[0] == 3)[0][0])
    np.testing.assert_allclose(l1[0, :first], l2[0, :first], atol=1e-6)
    assert not np.allclose(l1[0, first:], l2[0, first:])
    np.testing.assert_allclose(l1[1], l2[1], atol=1e-6)  # row 1 has no image


def model_media(batch):
    from model.models import media_inputs
    return media_inputs(batch)


def _merged_inputs(module, params, batch):
    """The decoder input embeddings after the media merge (sown by the Transformer)."""
    _, state = module.apply({"params": params}, jnp.asarray(batch["decoder_input_tokens"]),
                            jnp.asarray(batch["decoder_segment_ids"]),
                            jnp.asarray(batch["decoder_positions"]), model_media(batch),
                            mutable=["intermediates"])
    return np.asarray(state["intermediates"]["decoder_inputs"][0])
