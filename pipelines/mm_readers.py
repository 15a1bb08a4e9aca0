"""Readers: every input format of the multimodal job -> documents.

A document is the one shape every later step sees (paths already resolved):

    {"id": "1089-134686-0000", "source": "librispeech",
     "parts": [{"audio": "/data/librispeech/test-clean/1089/134686/1089-134686-0000.flac"},
               {"text": "HE HOPED THERE WOULD BE STEW FOR DINNER ...", "answer": True}]}

Parts are `{"text": str}` (optionally `"answer": True`: the text a model should
produce from what precedes it, e.g. a caption, a transcript, a QA answer),
`{"image": uri}`, `{"audio": uri}` or `{"video": uri}`, in document order. A
record that cannot be parsed becomes an error record instead,

    {"id": "captions.jsonl:3f2a...", "source": "captions", "error": "bad_record", "detail": "..."}

so it is dead-lettered like a bad media file rather than stopping the job.

Kinds (`--kind`):
    interleaved      JSONL {"id", "parts": [{"text"}|{"image"}|{"audio"}|{"video"}, ...]}
    captions         JSONL {"image", "caption"}
    coco             COCO captions JSON (images[] + annotations[]), one document per caption
    librispeech      LibriSpeech layout <split>/<spk>/<chapter>/*.flac + *.trans.txt (glob the .trans.txt)
    speech_manifest  JSONL {"audio", "text"}
    activitynet_qa   ActivityNet-QA *_q.json (answers from the matching *_a.json, joined on question_id)
    nextqa           NExT-QA CSV (video, question, answer, qid, type, a0..a4)
    text             plain text (one document per file) or JSONL {"text"} (pipelines.text_io)
Paths inside a manifest are relative to the manifest's directory unless absolute
or a URI. Video-QA annotations name videos by id: `video_dir` + `video_template`
(default "v_{video}.mp4" for ActivityNet, "{video}.mp4" for NExT-QA) give the file.
"""
import csv
import dataclasses
import hashlib
import io
import json
import os
from typing import Callable, Iterator

from pipelines import media_io

MEDIA_KINDS = ("image", "audio", "video")
_VIDEO_TEMPLATES = {"activitynet_qa": "v_{video}.mp4", "nextqa": "{video}.mp4"}


@dataclasses.dataclass(frozen=True)
class ReaderOptions:
    video_dir: str | None = None       # where video-QA videos live (default: beside the annotations)
    video_template: str | None = None  # file name of a video from its id, e.g. "v_{video}.mp4"


def _error(doc_id: str, source: str, reason: str, detail: str) -> dict:
    return {"id": doc_id, "source": source, "error": reason, "detail": detail}


def _line_id(path: str, line: str) -> str:
    return f"{os.path.basename(path)}:{hashlib.sha1(line.encode('utf-8')).hexdigest()[:12]}"


def _require(record: dict, keys: tuple[str, ...]) -> None:
    missing = [k for k in keys if not isinstance(record.get(k), str) or not record[k]]
    if missing:
        raise ValueError(f"missing or empty field(s) {missing}")


def _interleaved(record: dict, base: str) -> list[dict]:
    parts = record.get("parts")
    if not isinstance(parts, list) or not parts:
        raise ValueError("'parts' must be a non-empty list")
    out = []
    for i, part in enumerate(parts):
        if not isinstance(part, dict) or len(set(part) - {"answer"}) != 1:
            raise ValueError(f"part {i} must have exactly one of text/image/audio/video, got {part!r}")
        (kind,) = set(part) - {"answer"}
        value = part[kind]
        if not isinstance(value, str):
            raise ValueError(f"part {i}: {kind} must be a string")
        if kind == "text":
            out.append({"text": value, **({"answer": True} if part.get("answer") else {})})
        else:
            # Unknown kinds stay in the document: the encoder dead-letters them as unsupported.
            out.append({kind: media_io.resolve(value, base)})
    return out


def _caption(record: dict, base: str) -> list[dict]:
    _require(record, ("image", "caption"))
    return [{"image": media_io.resolve(record["image"], base)}, {"text": record["caption"], "answer": True}]


def _speech(record: dict, base: str) -> list[dict]:
    _require(record, ("audio", "text"))
    return [{"audio": media_io.resolve(record["audio"], base)}, {"text": record["text"], "answer": True}]


def _text(record: dict, base: str) -> list[dict]:
    del base
    _require(record, ("text",))
    return [{"text": record["text"]}]


# JSONL kinds: one record per line, parsed independently (Beam reads these line by line).
LINE_PARSERS: dict[str, Callable[[dict, str], list[dict]]] = {
    "interleaved": _interleaved, "captions": _caption, "speech_manifest": _speech, "text_jsonl": _text,
}


def parse_line(kind: str, path: str, line: str | bytes) -> dict | None:
    """One JSONL line of `path` -> document or error record (None for a blank line)."""
    if isinstance(line, bytes):
        try:
            line = line.decode("utf-8")
        except UnicodeDecodeError as e:
            fallback = f"{os.path.basename(path)}:{hashlib.sha1(line).hexdigest()[:12]}"
            return _error(fallback, kind, "bad_record", f"{path}: not UTF-8: {e}")
    if not line.strip():
        return None
    fallback = _line_id(path, line)
    try:
        record = json.loads(line)
        if not isinstance(record, dict):
            raise ValueError("a line must hold a JSON object")
        doc_id = str(record.get("id") or fallback)
        parts = LINE_PARSERS[kind](record, media_io.dirname(path))
    except (ValueError, TypeError) as e:
        return _error(fallback, kind, "bad_record", f"{path}: {e}")
    return {"id": doc_id, "source": kind, "parts": parts}


def read_coco(path: str, opts: ReaderOptions) -> Iterator[dict]:
    """COCO captions JSON: one document per annotation (image + caption)."""
    del opts
    base = media_io.dirname(path)
    try:
        data = json.loads(media_io.read_text(path))
        images = {im["id"]: im["file_name"] for im in data["images"]}
        annotations = data["annotations"]
    except (ValueError, KeyError, TypeError) as e:
        yield _error(os.path.basename(path), "coco", "bad_record", f"{path}: {e}")
        return
    for ann in annotations:
        doc_id = f"coco:{ann.get('id', ann.get('image_id'))}"
        file_name, caption = images.get(ann.get("image_id")), ann.get("caption")
        if not file_name or not isinstance(caption, str) or not caption:
            yield _error(doc_id, "coco", "bad_record", f"annotation {ann!r}: no image or caption")
            continue
        yield {"id": doc_id, "source": "coco",
               "parts": [{"image": media_io.resolve(file_name, base)}, {"text": caption, "answer": True}]}


def read_librispeech(path: str, opts: ReaderOptions) -> Iterator[dict]:
    """One `<spk>-<chapter>.trans.txt`: a document per line `<utt id> <TRANSCRIPT>`."""
    del opts
    base = media_io.dirname(path)
    for line in media_io.read_text(path).splitlines():
        if not line.strip():
            continue
        utt, _, transcript = line.strip().partition(" ")
        if not transcript:
            yield _error(utt, "librispeech", "bad_record", f"{path}: no transcript for {utt}")
            continue
        yield {"id": utt, "source": "librispeech",
               "parts": [{"audio": media_io.resolve(f"{utt}.flac", base)}, {"text": transcript, "answer": True}]}


def _video_path(video: str, kind: str, base: str, opts: ReaderOptions) -> str:
    template = opts.video_template or _VIDEO_TEMPLATES[kind]
    return media_io.resolve(template.format(video=video), opts.video_dir or base)


def read_activitynet_qa(path: str, opts: ReaderOptions) -> Iterator[dict]:
    """`<split>_q.json` (+ `<split>_a.json` beside it): a document per question."""
    if not path.endswith("_q.json"):
        raise ValueError(f"activitynet_qa input must be the *_q.json file, got {path}")
    base = media_io.dirname(path)
    try:
        questions = json.loads(media_io.read_text(path))
        answers = {a["question_id"]: a for a in json.loads(media_io.read_text(path[:-len("_q.json")] + "_a.json"))}
    except (ValueError, KeyError, TypeError, OSError) as e:
        yield _error(os.path.basename(path), "activitynet_qa", "bad_record", f"{path}: {e}")
        return
    for q in questions:
        qid = str(q.get("question_id"))
        a = answers.get(qid)
        if a is None or not q.get("video_name") or not q.get("question"):
            yield _error(qid, "activitynet_qa", "bad_record", f"{path}: question {qid} lacks video, text or answer")
            continue
        yield {"id": qid, "source": "activitynet_qa",
               "parts": [{"video": _video_path(q["video_name"], "activitynet_qa", base, opts)},
                         {"text": f"question: {q['question']}?\nanswer:"},
                         {"text": str(a["answer"]), "answer": True}]}


def read_nextqa(path: str, opts: ReaderOptions) -> Iterator[dict]:
    """NExT-QA CSV: a multiple-choice document per row; the answer is "(letter) option"."""
    base = media_io.dirname(path)
    for row in csv.DictReader(io.StringIO(media_io.read_text(path))):
        doc_id = f"nextqa:{row.get('video')}:{row.get('qid')}"
        try:
            options = [row[f"a{i}"] for i in range(5)]
            answer = int(row["answer"])
            letter = "abcde"[answer]
            question = row["question"]
            video = row["video"]
            if not video or not question:
                raise ValueError("empty video or question")
        except (KeyError, ValueError, IndexError, TypeError) as e:
            yield _error(doc_id, "nextqa", "bad_record", f"{path}: {e}")
            continue
        listed = " ".join(f"({l}) {o}" for l, o in zip("abcde", options))
        yield {"id": doc_id, "source": "nextqa",
               "parts": [{"video": _video_path(video, "nextqa", base, opts)},
                         {"text": f"question: {question}?\noptions: {listed}\nanswer:"},
                         {"text": f"({letter}) {options[answer]}", "answer": True}]}


def is_jsonl(path: str) -> bool:
    return path.lower().endswith((".jsonl", ".json"))


def read_text_file(path: str, opts: ReaderOptions) -> Iterator[dict]:
    """Plain text: the whole file is one document; .jsonl/.json: one per line."""
    del opts
    if is_jsonl(path):
        for line in media_io.read_text(path).splitlines():
            doc = parse_line("text_jsonl", path, line)
            if doc is not None:
                yield {**doc, "source": "text"}
        return
    yield {"id": os.path.basename(path), "source": "text", "parts": [{"text": media_io.read_text(path)}]}


FILE_READERS: dict[str, Callable[[str, ReaderOptions], Iterator[dict]]] = {
    "coco": read_coco, "librispeech": read_librispeech, "activitynet_qa": read_activitynet_qa,
    "nextqa": read_nextqa, "text": read_text_file,
}
KINDS = tuple(k for k in LINE_PARSERS if k != "text_jsonl") + tuple(FILE_READERS)
DEFAULT_GLOBS = {"librispeech": "**/*.trans.txt", "activitynet_qa": "*_q.json"}


def check_kind(kind: str) -> None:
    if kind not in KINDS:
        import difflib
        close = difflib.get_close_matches(kind, KINDS, n=1)
        raise ValueError(f"unknown --kind {kind!r}" + (f"; did you mean {close[0]!r}?" if close else "")
                         + f" Known kinds: {KINDS}")


def expand_input(kind: str, pattern: str) -> list[str]:
    """Files for `pattern`; a directory means its DEFAULT_GLOBS entry (e.g. LibriSpeech transcripts)."""
    check_kind(kind)
    if not media_io.has_scheme(pattern) and os.path.isdir(pattern):
        pattern = os.path.join(pattern, DEFAULT_GLOBS.get(kind, "*"))
    files = [f for f in media_io.glob(pattern) if media_io.has_scheme(f) or os.path.isfile(f)]
    if not files:
        raise FileNotFoundError(f"--input {pattern!r} matches no files for --kind={kind}; check the path")
    return files


def read_file(kind: str, path: str, opts: ReaderOptions = ReaderOptions()) -> Iterator[dict]:
    """All documents (and error records) of one input file."""
    if kind in LINE_PARSERS:
        for line in media_io.read_bytes(path, 1 << 40).splitlines():
            doc = parse_line(kind, path, line)
            if doc is not None:
                yield doc
    else:
        yield from FILE_READERS[kind](path, opts)


def read_file_or_error(path: str, kind: str, opts: ReaderOptions = ReaderOptions()) -> Iterator[dict]:
    """read_file, but a file that cannot be read at all becomes one error record (the job goes on)."""
    try:
        yield from read_file(kind, path, opts)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        reason = "missing_file" if isinstance(e, FileNotFoundError) else (
            "unreadable" if isinstance(e, OSError) else "bad_record")
        yield _error(os.path.basename(path), kind, reason, f"{path}: {e}")


def read_documents(kind: str, pattern: str, opts: ReaderOptions = ReaderOptions()) -> Iterator[dict]:
    """Every document of every file matching `pattern` (the plain, Beam-free path)."""
    for path in expand_input(kind, pattern):
        yield from read_file_or_error(path, kind, opts)
