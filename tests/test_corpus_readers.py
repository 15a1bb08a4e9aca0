"""The generated corpus goes through the multimodal job's own readers and encoder unchanged.

No Beam here: `generate_in_process` writes a small split, then every manifest is read
with `pipelines.mm_readers` (default options: videos beside the annotations) and
encoded with `pipelines.interleave.DocumentEncoder` at the demo's media sizes.
"""
import json

import numpy as np
import pytest

from pipelines import generate_corpus as gc
from pipelines import interleave, media_slots, mm_readers, special_tokens
from pipelines.media_config import MediaConfig
from pipelines.preprocess_multimodal import DEFAULT_VOCAB
from pipelines.synthetic import motion_video

# The demo's media sizes: 32 px images and frames cut into 8 px patches.
DEMO_MEDIA = MediaConfig(image_size=32, image_patch_size=8, video_frame_size=32, video_patch_size=8)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    cfg = gc.CorpusConfig(output_dir=str(tmp_path_factory.mktemp("corpus")), split="test", seed=1,
                          counts=(("image", 6), ("speech", 5), ("video", 6), ("interleaved", 5), ("text", 4)))
    counts = gc.generate_in_process(cfg)
    assert counts == dict(cfg.counts)
    assert gc.is_complete(cfg)
    info = json.load(open(f"{cfg.split_dir}/{gc.INFO_FILE}"))
    assert info["reader_inputs"] == gc.reader_inputs("test") and set(INPUTS) <= set(mm_readers.KINDS)
    return cfg


@pytest.fixture(scope="module")
def encoder():
    return interleave.DocumentEncoder(DEMO_MEDIA, DEFAULT_VOCAB)


INPUTS = gc.reader_inputs("test")  # reader kind -> manifest inside the split dir


def _encode_all(cfg, encoder, kind):
    docs = list(mm_readers.read_documents(kind, f"{cfg.split_dir}/{INPUTS[kind]}"))
    results = [encoder.encode(d) for d in docs]
    dead = [r.dead_letter for r in results if r.dead_letter]
    assert not dead, dead
    return docs, [r.example for r in results]


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(INPUTS))
def test_every_manifest_reads_and_encodes(corpus, encoder, kind):
    docs, examples = _encode_all(corpus, encoder, kind)
    expected = {"captions": 6, "speech_manifest": 5, "nextqa": 6, "activitynet_qa": 6, "interleaved": 5, "text": 4}
    assert len(examples) == expected[kind]
    for ex in examples:
        targets = ex["targets"].tolist()
        n_images = targets.count(special_tokens.BEGIN_IMAGE_ID)
        n_videos = targets.count(special_tokens.BEGIN_VIDEO_ID)
        assert n_images == len(ex["image_bytes"]) and n_videos == len(ex["video_bytes"])
        # Every video keeps all 4 frames at the default 1 fps sampling: K = 4 * (32/8)^2.
        assert ex["video_frames"].tolist() == [4] * n_videos
        assert targets.count(special_tokens.VIDEO_ID) == n_videos * media_slots.video_slots(4, 32, 8)
        assert targets.count(special_tokens.IMAGE_ID) == n_images * media_slots.image_slots(32, 8)
        # Spoken digits stay short: at most ~2.5 s of log-mel, i.e. <= 63 audio slots per clip.
        for frames in ex["audio_frames"].tolist():
            assert 30 <= frames <= 250
    if kind in ("nextqa", "activitynet_qa"):
        answers = [ex["answer"] for ex in examples]
        directions = [a.split(") ")[-1] for a in answers]
        assert set(directions) <= set(motion_video.DIRECTIONS), answers


@pytest.mark.slow
def test_decoded_image_matches_the_caption(corpus, encoder):
    """After the job's own decoding (32 px, no resize), the named colour is where the caption says."""
    from pipelines.synthetic import shapes
    records = [json.loads(l) for l in open(f"{corpus.split_dir}/images/captions.jsonl")]
    _, examples = _encode_all(corpus, encoder, "captions")
    for record, ex in zip(records, examples):
        image = np.frombuffer(ex["image_bytes"][0], np.uint8).reshape(32, 32, 3).astype(int)
        distance = np.abs(image - np.asarray(shapes.COLOURS[record["colour"]])).max(-1)
        ys, xs = np.nonzero(distance <= shapes.COLOUR_JITTER + 2)
        assert len(xs) > 20, record
        assert int(xs.mean() // (32 / 3)) == {"left": 0, "middle": 1, "right": 2}[record["position"]]
        assert ex["answer"] == record["caption"]
