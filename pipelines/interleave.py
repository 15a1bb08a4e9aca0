"""Documents -> examples: decode every part, tokenize text, interleave placeholders.

An example (one tf.train.Example in the SeqIO cache; `MM_FEATURES` declares it):

    {"targets":      int32 [N]  text ids; each media item as BEGIN, K placeholders, END
                                (no EOS: the packer appends it, as for the text task),
     "prompt_length": int32 []  tokens before the first answer part (N if none),
     "answer":       string []  the answer parts' text ("" if none): caption, transcript, QA answer,
     "image_bytes":  string [I] raw uint8 [S, S, 3] per image, S = image_size,
     "audio_bytes":  string [A] raw float16 [T_a, n_mels] log-mel per audio item,
     "audio_frames": int32  [A] T_a,
     "video_bytes":  string [V] raw uint8 [F_v, S_v, S_v, 3] per video, S_v = video_frame_size,
     "video_frames": int32  [V] F_v,
     "image_size", "video_frame_size", "n_mels": int32 [] (so readers can check their config),
     "source_id", "source": string [], "source_paths": string [P] the media URIs in order}

Media are stored as fixed-dtype raw buffers (TRAPS: SeqIO infers nothing from
them; shapes come from the scalar features and *_frames), so the training input
pipeline only does `np.frombuffer(...).reshape(...)`. Payloads of each modality
are in order of appearance, and the j-th BEGIN_<m> ... END_<m> run in `targets`
belongs to the j-th payload of modality m with exactly K placeholders:
K = media_slots.image_slots / video_slots(F_v) / audio_slots(T_a).
A long audio clip becomes several consecutive audio items (segments); a video
with `keep_video_audio` is followed by its audio track's items.
"""
import dataclasses
from typing import Any

import numpy as np

from pipelines import audio_decode, image_decode, media_io, special_tokens, video_decode, vocab
from pipelines.media_config import BadInput, MediaConfig

MEDIA_KINDS = ("image", "audio", "video")


def mm_features() -> dict:
    """FeatureSpecs of an example, for seqio_cache.WriteSeqioCache (imports Beam-side module lazily)."""
    from pipelines.seqio_cache import FeatureSpec
    return {
        "targets": FeatureSpec("int32", [None]),
        "prompt_length": FeatureSpec("int32", []),
        "answer": FeatureSpec("string", []),
        "image_bytes": FeatureSpec("string", [None]),
        "audio_bytes": FeatureSpec("string", [None]),
        "audio_frames": FeatureSpec("int32", [None]),
        "video_bytes": FeatureSpec("string", [None]),
        "video_frames": FeatureSpec("int32", [None]),
        "image_size": FeatureSpec("int32", []),
        "video_frame_size": FeatureSpec("int32", []),
        "n_mels": FeatureSpec("int32", []),
        "source_id": FeatureSpec("string", []),
        "source": FeatureSpec("string", []),
        "source_paths": FeatureSpec("string", [None]),
    }


@dataclasses.dataclass
class Result:
    """What encoding one document gives: an example, or the reason it was dead-lettered."""
    example: dict | None
    dead_letter: dict | None
    dropped_parts: list[dict]  # with drop_bad_parts: parts left out, each {"part", "reason", "detail"}


def dead_letter(doc: dict, reason: str, detail: str) -> dict:
    return {"id": doc.get("id", "?"), "source": doc.get("source", "?"), "reason": reason, "detail": detail}


def media_run(modality: str, k: int) -> list[int]:
    placeholder, begin, end = special_tokens.MODALITY_IDS[modality]
    return [begin] + [placeholder] * k + [end]


class DocumentEncoder:
    """Holds the tokenizer; `encode(doc)` does all heavy per-document work."""

    def __init__(self, cfg: MediaConfig, vocab_path: str):
        self.cfg = cfg
        self.sp = vocab.load(vocab_path)  # bytes via pipelines.fs: works on any worker

    def tokenize(self, text: str) -> list[int]:
        return special_tokens.escape_reserved_ids(self.sp.encode(text))

    def _decode_part(self, kind: str, uri: str) -> list[tuple[str, np.ndarray]]:
        """One media part -> [(modality, payload), ...] (audio segments, video + its audio)."""
        cfg = self.cfg
        data = media_io.read_bytes(uri, cfg.max_file_bytes)
        if kind == "image":
            return [("image", image_decode.decode_image(data, cfg, uri))]
        if kind == "audio":
            return [("audio", m) for m in audio_decode.decode_audio(data, cfg, uri)]
        video = video_decode.decode_video(data, cfg, uri)
        return [("video", video.frames)] + [("audio", m) for m in video.audio]

    def encode(self, doc: dict) -> Result:
        if "error" in doc:
            return Result(None, dead_letter(doc, doc["error"], doc.get("detail", "")), [])
        cfg = self.cfg
        targets: list[int] = []
        prompt_length, answers, dropped, paths = None, [], [], []
        payloads: dict[str, list[np.ndarray]] = {m: [] for m in MEDIA_KINDS}
        stats = {f"{m}_{s}": 0.0 for m in MEDIA_KINDS for s in ("items", "seconds", "placeholder_tokens")}
        for i, part in enumerate(doc["parts"]):
            (kind,) = set(part) - {"answer"}
            try:
                if kind == "text":
                    if part.get("answer"):
                        prompt_length = len(targets) if prompt_length is None else prompt_length
                        answers.append(part["text"])
                    targets.extend(self.tokenize(part["text"]))
                    continue
                if kind not in MEDIA_KINDS:
                    raise BadInput("unsupported", f"part {i}: unknown part kind {kind!r}")
                items = self._decode_part(kind, part[kind])
            except BadInput as e:
                if not cfg.drop_bad_parts:
                    return Result(None, dead_letter(doc, e.reason, f"part {i}: {e.detail}"), [])
                dropped.append({"part": i, "reason": e.reason, "detail": e.detail})
                continue
            paths.append(part[kind])
            for modality, payload in items:
                if modality == "image":
                    k, seconds = cfg.image_slots(), 0.0
                elif modality == "audio":
                    k, seconds = cfg.audio_slots(payload.shape[0]), (payload.shape[0] - 1) * cfg.hop_ms / 1000
                else:
                    k, seconds = cfg.video_slots(payload.shape[0]), payload.shape[0] / cfg.video_fps
                targets.extend(media_run(modality, k))
                payloads[modality].append(payload)
                stats[f"{modality}_items"] += 1
                stats[f"{modality}_seconds"] += seconds
                stats[f"{modality}_placeholder_tokens"] += k
        if not targets:
            reason = dropped[0]["reason"] if dropped else "empty"
            return Result(None, dead_letter(doc, reason, "no usable parts" if dropped else "document has no content"),
                          dropped)
        example = {
            "targets": np.asarray(targets, dtype=np.int32),
            "prompt_length": np.int32(len(targets) if prompt_length is None else prompt_length),
            "answer": " ".join(answers),
            "image_bytes": [p.tobytes() for p in payloads["image"]],
            "audio_bytes": [p.tobytes() for p in payloads["audio"]],
            "audio_frames": np.asarray([p.shape[0] for p in payloads["audio"]], dtype=np.int32),
            "video_bytes": [p.tobytes() for p in payloads["video"]],
            "video_frames": np.asarray([p.shape[0] for p in payloads["video"]], dtype=np.int32),
            "image_size": np.int32(cfg.image_size),
            "video_frame_size": np.int32(cfg.video_frame_size),
            "n_mels": np.int32(cfg.n_mels),
            "source_id": str(doc["id"]),
            "source": str(doc.get("source", "")),
            "source_paths": list(paths),
            "_stats": {**stats, "dropped_parts": len(dropped)},
        }
        return Result(example, None, dropped)


def example_stats(example: dict) -> dict:
    """Extra cache stats (summed by WriteSeqioCache): media items, seconds, placeholder tokens."""
    return dict(example.get("_stats", {}))


def payloads(example: dict[str, Any]) -> dict[str, list[np.ndarray]]:
    """Raw buffers of an example (cache or fresh) -> arrays per modality, in order."""
    s, sv, n_mels = int(example["image_size"]), int(example["video_frame_size"]), int(example["n_mels"])
    return {
        "image": [np.frombuffer(b, np.uint8).reshape(s, s, 3) for b in example["image_bytes"]],
        "audio": [np.frombuffer(b, np.float16).reshape(int(t), n_mels)
                  for b, t in zip(example["audio_bytes"], example["audio_frames"])],
        "video": [np.frombuffer(b, np.uint8).reshape(int(f), sv, sv, 3)
                  for b, f in zip(example["video_bytes"], example["video_frames"])],
    }


def decode_example(example: dict[str, Any], sp, cfg: MediaConfig) -> list[tuple[str, Any]]:
    """Example -> [("text", str) | (modality, array), ...] in document order.

    Checks the interleaving: every BEGIN..END run has exactly K placeholders for
    its payload, and every payload is used once (ValueError otherwise).
    """
    media = payloads(example)
    used = {m: 0 for m in MEDIA_KINDS}
    begin_of = {ids[1]: m for m, ids in special_tokens.MODALITY_IDS.items()}
    out: list[tuple[str, Any]] = []
    tokens = [int(t) for t in example["targets"]]
    text: list[int] = []
    i = 0
    while i < len(tokens):
        t = tokens[i]
        if t not in begin_of:
            text.append(t)
            i += 1
            continue
        if text:
            out.append(("text", sp.decode(text)))
            text = []
        modality = begin_of[t]
        placeholder, _, end = special_tokens.MODALITY_IDS[modality]
        j = i + 1
        while j < len(tokens) and tokens[j] == placeholder:
            j += 1
        if j >= len(tokens) or tokens[j] != end:
            raise ValueError(f"{modality} run at {i} is not closed by its END marker")
        if used[modality] >= len(media[modality]):
            raise ValueError(f"more {modality} runs than payloads")
        item = media[modality][used[modality]]
        used[modality] += 1
        k = {"image": lambda x: cfg.image_slots(), "audio": lambda x: cfg.audio_slots(x.shape[0]),
             "video": lambda x: cfg.video_slots(x.shape[0])}[modality](item)
        if j - i - 1 != k:
            raise ValueError(f"{modality} run at {i} has {j - i - 1} placeholders, its payload needs {k}")
        out.append((modality, item))
        i = j + 1
    if text:
        out.append(("text", sp.decode(text)))
    unused = {m: len(media[m]) - used[m] for m in MEDIA_KINDS if len(media[m]) != used[m]}
    if unused:
        raise ValueError(f"payloads without a placeholder run: {unused}")
    return out
