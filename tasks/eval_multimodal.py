"""Multimodal eval inputs: prompts (with media) of cached multimodal tasks, for decoding
suites (captions, speech, video QA)."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import gin
import numpy as np

from tasks.eval_tokens import detokenizer
from tasks.eval_video_qa import parse_choices, question_type


_MEDIA_KEYS = ("images", "image_mask", "audio", "audio_lengths", "videos", "video_lengths")


@gin.configurable(module="eval_inputs")
def multimodal_prompts(task_name: str = gin.REQUIRED, split: str = "validation",
                       cache_dirs: Sequence[str] = (), max_examples: int | None = None,
                       max_images: int = 0, image_size: int = 224, max_audio: int = 0,
                       audio_frames: int = 3001, n_mels: int = 80, max_videos: int = 0,
                       video_frames: int = 16, video_frame_size: int = 112,
                       num_choices: int = 5, vocab_path: str | None = None) -> list[dict[str, Any]]:
    """Prompts of a cached multimodal task (`tasks/multimodal.py`) for decoding suites.

    Each example's `targets[:prompt_length]` (text, media markers and placeholders) is
    the prompt, its `answer` the reference; the media of the example become one row's
    `features` with the same per-row budgets and slot shapes as training
    (`multimodal.get_dataset`), so prompts batch together. For multiple choice, `meta`
    holds the options parsed from the prompt text ("(a) ... (b) ...") and the label
    parsed from the answer ("(b) ..."), by the same rules as the scorer.
    """
    import seqio

    from tasks import multimodal, packing

    if cache_dirs:
        seqio.add_global_cache_dirs(list(cache_dirs))
    multimodal.register_tasks()
    cfg = packing.PackingConfig(
        batch_size=1, length=1, pack=False, max_images=max_images, image_size=image_size,
        max_audio=max_audio, audio_frames=audio_frames, n_mels=n_mels, max_videos=max_videos,
        video_frames=video_frames, video_frame_size=video_frame_size)
    decode = detokenizer(vocab_path)
    out = []
    for i, ex in enumerate(multimodal.examples(task_name, split)):
        if max_examples is not None and i >= max_examples:
            break
        n = int(ex["prompt_length"])
        prompt = [int(t) for t in ex["targets"][:n]]
        packer = packing.MultimodalPacker(dataclasses.replace(cfg, length=n + 1))
        batches = list(packer([{**ex, "targets": np.asarray(prompt, np.int32)}]))
        if not batches or packer.counts["segments"] == 0:
            raise ValueError(f"{task_name}/{i}: its media do not fit the budgets "
                             f"{cfg} ({packer.counts}); raise max_* / *_frames")
        features = {k: batches[0][k][0] for k in _MEDIA_KEYS if k in batches[0]}
        answer = ex["answer"].decode("utf-8")
        text = decode([t for t in prompt if t >= 19])  # text pieces only (no media ids)
        shown = readable_prompt(prompt, decode)
        meta = {"source": ex["source"].decode("utf-8")}
        qtype = question_type(meta["source"], ex["source_id"].decode("utf-8"))
        if qtype:
            meta["type"] = qtype  # per-type accuracy (model/evaluation/video_qa.py)
        options, label = parse_choices(text, answer)
        if options:
            meta["options"], meta["label"] = options[:num_choices], label
        out.append({"sample_id": ex["source_id"].decode("utf-8"), "prompt_ids": prompt,
                    "features": features, "answer": answer, "prompt_text": shown, "meta": meta})
    return out


def readable_prompt(ids: Sequence[int], decode: Callable[[Sequence[int]], str]) -> str:
    """Prompt text with each media run shown as `<image x16>` (for samples files)."""
    from pipelines import special_tokens as st

    names = {ids_[0]: m for m, ids_ in st.MODALITY_IDS.items()}
    markers = {i for ids_ in st.MODALITY_IDS.values() for i in ids_[1:]}
    out, text, i = [], [], 0
    while i < len(ids):
        t = int(ids[i])
        if t in names:
            j = i
            while j < len(ids) and int(ids[j]) == t:
                j += 1
            if text:
                out.append(decode(text))
                text = []
            out.append(f"<{names[t]} x{j - i}>")
            i = j
            continue
        if t not in markers:
            text.append(t)
        i += 1
    if text:
        out.append(decode(text))
    return "".join(out)


@gin.configurable(module="eval_inputs")
def caption_slot_vocab() -> dict[str, list[str]]:
    """Colour and shape words of the generated shapes corpus (pipelines/synthetic/shapes.py),
    for `GenerationSuite(metric='slots')`: caption colour+shape exact match."""
    from pipelines.synthetic import shapes
    return {"colour": sorted(shapes.COLOURS), "shape": list(shapes.SHAPES)}
