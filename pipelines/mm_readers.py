"""Readers: every input format of the multimodal job -> documents.

A document is the one shape every later step sees (paths already resolved):

    {"id": "1089-134686-0000", "source": "librispeech",
     "parts": [{"audio": "/data/librispeech/test-clean/1089/134686/1089-134686-0000.flac"},
               {"text": "HE HOPED THERE WOULD BE STEW FOR DINNER ...", "answer": True}]}

Parts are `{"text": str}` (optionally `"answer": True`: the text a model should
produce from what precedes it, e.g. a caption, a transcript, a QA answer),
`{"image": uri}`, `{"audio": uri}` or `{"video": uri}`, in document order. A
record (a line, a CSV row, an annotation) that cannot be parsed becomes an error
record instead, under its own id where it has one, else `<file>:<line>`,

    {"id": "captions.jsonl:3", "source": "captions", "error": "bad_record", "detail": "<path>:3: ..."}

so it is dead-lettered like a bad media file rather than stopping the job. Every
manifest is read record by record: a bad byte or a broken row costs that row only
(a whole-file JSON that does not parse at all is one error record for the file).

Kinds (`--kind`):
    interleaved      JSONL {"id", "parts": [{"text"}|{"image"}|{"audio"}|{"video"}, ...]}
    captions         JSONL {"image", "caption"}
    coco             COCO captions JSON (images[] + annotations[]), one document per caption
    librispeech      LibriSpeech layout <split>/<spk>/<chapter>/*.flac + *.trans.txt (a directory: its *.trans.txt)
    speech_manifest  JSONL {"audio", "text"}
    activitynet_qa   ActivityNet-QA *_q.json (answers from the matching *_a.json, joined on question_id)
    nextqa           NExT-QA CSV (video, question, answer, qid, type, a0..a4); id
                     "nextqa:<video>:<qid>:<type>" (the question type kept for per-type scores)
    text             plain text (one document per file) or JSONL {"text"} (pipelines.text_io)
Line-oriented kinds (the JSONL kinds, LibriSpeech transcripts, JSONL text) are
read in byte ranges by the Beam job (text_io.ReadRanges). Paths inside a manifest
are relative to the manifest's directory unless absolute or a URI. Video-QA
annotations name videos by id: `video_dir` + `video_template` (default
"v_{video}.mp4" for ActivityNet, "{video}.mp4" for NExT-QA) give the file.
"""
import csv
import dataclasses
import io
import json
from typing import Callable, Iterator

from pipelines import media_io, text_io

MEDIA_KINDS = ("image", "audio", "video")
_VIDEO_TEMPLATES = {"activitynet_qa": "v_{video}.mp4", "nextqa": "{video}.mp4"}


@dataclasses.dataclass(frozen=True)
class ReaderOptions:
    video_dir: str | None = None       # where video-QA videos live (default: beside the annotations)
    video_template: str | None = None  # file name of a video from its id, e.g. "v_{video}.mp4"


def _error(doc_id: str, source: str, reason: str, detail: str) -> dict:
    return {"id": doc_id, "source": source, "error": reason, "detail": detail}


def _require(record: dict, keys: tuple[str, ...]) -> None:
    missing = [k for k in keys if not isinstance(record.get(k), str) or not record[k]]
    if missing:
        raise ValueError(f"missing or empty field(s) {missing}")


def _not_utf8(*values) -> str | None:
    """A complaint if any string holds bytes that were not UTF-8 (decoded with surrogateescape)."""
    for v in values:
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError as e:
                return f"not UTF-8 ({v[max(0, e.start - 10):e.start].strip()!r} then a bad byte)"
    return None


def _interleaved(record: dict, base: str) -> list[dict]:
    parts = record.get("parts")
    if not isinstance(parts, list) or not parts:
        raise ValueError("'parts' must be a non-empty list")
    out = []
    for i, part in enumerate(parts):
        if not isinstance(part, dict) or len(set(part) - {"answer"}) != 1:
            raise ValueError(f"part {i} must have exactly one of text/image/audio/video, got keys "
                             f"{sorted(part) if isinstance(part, dict) else type(part).__name__}")
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


# JSONL kinds: one record per line, parsed independently (Beam reads these in byte ranges).
LINE_PARSERS: dict[str, Callable[[dict, str], list[dict]]] = {
    "interleaved": _interleaved, "captions": _caption, "speech_manifest": _speech, "text_jsonl": _text,
}


def parse_line(kind: str, path: str, line: str | bytes, line_number: int = 0) -> dict | None:
    """One JSONL line (number `line_number`) of `path` -> document or error record (None for a blank line)."""
    parsed = text_io.parse_jsonl_line(path, line_number, line)
    if parsed is None:
        return None
    if "error" in parsed:
        return _error(parsed["id"], kind, parsed["error"], parsed["detail"])
    try:
        parts = LINE_PARSERS[kind](parsed["record"], media_io.dirname(path))
    except (ValueError, TypeError) as e:
        return _error(parsed["id"], kind, "bad_record", f"{parsed['where']}: {e}")
    return {"id": parsed["id"], "source": kind, "parts": parts}


def parse_librispeech_line(path: str, line: bytes | str, line_number: int = 0) -> dict | None:
    """One line `<utt id> <TRANSCRIPT>` of a `<spk>-<chapter>.trans.txt` -> document (audio beside it)."""
    where = f"{path}:{line_number}"
    if isinstance(line, bytes):
        line = line.removeprefix(text_io.BOM).decode("utf-8", "surrogateescape")
    if not line.strip():
        return None
    utt, _, transcript = line.strip().partition(" ")
    utt_id = utt.encode("utf-8", "replace").decode("utf-8")
    problem = _not_utf8(line) or (None if transcript.strip() else f"no transcript for {utt_id}")
    if problem:
        return _error(utt_id, "librispeech", "bad_record", f"{where}: {problem}")
    return {"id": utt, "source": "librispeech", "parts": [
        {"audio": media_io.resolve(f"{utt}.flac", media_io.dirname(path))}, {"text": transcript, "answer": True}]}


def _load_json(path: str):
    """A whole JSON manifest; bytes that are not UTF-8 survive as surrogates (checked per record)."""
    return json.loads(text_io.read_whole(path).removeprefix(text_io.BOM).decode("utf-8", "surrogateescape"))


def read_coco(path: str, opts: ReaderOptions) -> Iterator[dict]:
    """COCO captions JSON: one document per annotation (image + caption)."""
    del opts
    base = media_io.dirname(path)
    try:
        data = _load_json(path)
        images = {im.get("id"): im.get("file_name") for im in data["images"] if isinstance(im, dict)}
        annotations = data["annotations"]
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        yield _error(text_io.basename(path), "coco", "bad_record", f"{path}: not a COCO captions file ({e})")
        return
    for i, ann in enumerate(annotations):
        ann = ann if isinstance(ann, dict) else {}
        doc_id = f"coco:{ann.get('id', ann.get('image_id', f'annotation{i}'))}"
        file_name, caption = images.get(ann.get("image_id")), ann.get("caption")
        problem = ("no image or caption" if not isinstance(file_name, str) or not file_name
                   or not isinstance(caption, str) or not caption else _not_utf8(file_name, caption))
        if problem:
            doc_id = f"coco:annotation{i}" if _not_utf8(doc_id) else doc_id
            yield _error(doc_id, "coco", "bad_record", f"{path}: annotation {i}: {problem}")
            continue
        yield {"id": doc_id, "source": "coco",
               "parts": [{"image": media_io.resolve(file_name, base)}, {"text": caption, "answer": True}]}


def read_librispeech(path: str, opts: ReaderOptions) -> Iterator[dict]:
    """One `<spk>-<chapter>.trans.txt`: a document per line (the plain, Beam-free path)."""
    del opts
    for n, line in text_io.read_range_lines(text_io.ReadRange(path)):
        doc = parse_librispeech_line(path, line, n)
        if doc is not None:
            yield doc


def _video_path(video: str, kind: str, base: str, opts: ReaderOptions) -> str:
    template = opts.video_template or _VIDEO_TEMPLATES[kind]
    return media_io.resolve(template.format(video=video), opts.video_dir or base)


def read_activitynet_qa(path: str, opts: ReaderOptions) -> Iterator[dict]:
    """`<split>_q.json` (+ `<split>_a.json` beside it): a document per question."""
    if not path.endswith("_q.json"):
        raise ValueError(f"activitynet_qa input must be the *_q.json file, got {path}")
    base = media_io.dirname(path)
    try:
        questions = _load_json(path)
        answers = {a.get("question_id"): a for a in _load_json(path[:-len("_q.json")] + "_a.json")
                   if isinstance(a, dict)}
    except (ValueError, TypeError, AttributeError, OSError) as e:
        yield _error(text_io.basename(path), "activitynet_qa", "bad_record", f"{path}: {type(e).__name__}: {e}")
        return
    for i, q in enumerate(questions):
        q = q if isinstance(q, dict) else {}
        qid = str(q.get("question_id", f"{text_io.basename(path)}:{i}"))
        a = answers.get(q.get("question_id"))
        problem = ("lacks video, question or answer" if a is None or not q.get("video_name") or not q.get("question")
                   else _not_utf8(q["video_name"], q["question"], str(a.get("answer"))))
        if problem:
            yield _error(qid.encode("utf-8", "replace").decode(), "activitynet_qa", "bad_record",
                         f"{path}: question {i}: {problem}")
            continue
        yield {"id": qid, "source": "activitynet_qa",
               "parts": [{"video": _video_path(q["video_name"], "activitynet_qa", base, opts)},
                         {"text": f"question: {q['question']}?\nanswer:"},
                         {"text": str(a["answer"]), "answer": True}]}


def _nextqa_row(row: dict, path: str, where: str, base: str, opts: ReaderOptions) -> dict:
    doc_id = f"nextqa:{row.get('video')}:{row.get('qid')}".encode("utf-8", "replace").decode()
    try:
        if None in row or any(v is None for v in row.values()):
            raise ValueError("wrong number of columns")
        problem = _not_utf8(*row.values())
        if problem:
            raise ValueError(problem)
        options = [row[f"a{i}"] for i in range(5)]
        answer = int(row["answer"])
        letter = "abcde"[answer]
        question, video = row["question"], row["video"]
        if not video or not question:
            raise ValueError("empty video or question")
    except (KeyError, ValueError, IndexError, TypeError) as e:
        return _error(doc_id, "nextqa", "bad_record", f"{where}: {e}")
    listed = " ".join(f"({l}) {o}" for l, o in zip("abcde", options))
    qtype = row.get("type", "").strip()
    if qtype:  # NExT-QA's question type (CW, TN, DC, ...) rides in the id, into the cache
        doc_id = f"{doc_id}:{qtype}"
    return {"id": doc_id, "source": "nextqa",
            "parts": [{"video": _video_path(video, "nextqa", base, opts)},
                      {"text": f"question: {question}?\noptions: {listed}\nanswer:"},
                      {"text": f"({letter}) {options[answer]}", "answer": True}]}


def read_nextqa(path: str, opts: ReaderOptions) -> Iterator[dict]:
    """NExT-QA CSV, streamed row by row: a multiple-choice document per row; the answer is "(letter) option"."""
    base = media_io.dirname(path)
    with text_io.open_input(path) as f:
        text = io.TextIOWrapper(f, encoding="utf-8-sig", errors="surrogateescape", newline="")
        reader = csv.DictReader(text)
        try:
            for row in reader:
                yield _nextqa_row(row, path, f"{path}:{reader.line_num}", base, opts)
        except csv.Error as e:
            yield _error(f"{text_io.basename(path)}:{reader.line_num}", "nextqa", "bad_record",
                         f"{path}:{reader.line_num}: CSV error, rest of the file not read ({e})")


def read_text_file(path: str, opts: ReaderOptions) -> Iterator[dict]:
    """Plain text: the whole file is one document; JSONL: one per line."""
    del opts
    if text_io.is_jsonl(path):
        for n, line in text_io.read_range_lines(text_io.ReadRange(path)):
            doc = parse_line("text_jsonl", path, line, n)
            if doc is not None:
                yield {**doc, "source": "text"}
        return
    doc = text_io.plain_text_document(path, text_io.read_whole(path))
    if "error" in doc:
        yield {**doc, "source": "text"}
    else:
        yield {"id": doc["id"], "source": "text", "parts": [{"text": doc["text"]}]}


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


def is_line_file(kind: str, path: str) -> bool:
    """Whether the Beam job reads this input of `kind` in line ranges (else whole, record by record)."""
    return kind in LINE_PARSERS or kind == "librispeech" or (kind == "text" and text_io.is_jsonl(path))


def resolve_inputs(kind: str, patterns: list[str]) -> list[str]:
    """The patterns as the runner matches them (a directory means its DEFAULT_GLOBS entry); checked to exist."""
    check_kind(kind)
    try:
        return text_io.resolve_patterns(patterns, DEFAULT_GLOBS.get(kind, "*"))
    except FileNotFoundError as e:
        raise FileNotFoundError(f"--input {patterns!r} matches no files for --kind={kind}; check the path ({e})")


def expand_input(kind: str, pattern: str) -> list[str]:
    """Every file for `pattern`, listed here (the plain, Beam-free path)."""
    return text_io.expand_patterns(resolve_inputs(kind, [pattern]))


def range_documents(r: text_io.ReadRange, kind: str, opts: ReaderOptions = ReaderOptions()) -> Iterator[dict]:
    """All documents (and error records) of one range of an input; a file that cannot be read at all
    becomes one error record (the job goes on)."""
    try:
        if not is_line_file(kind, r.path):
            yield from FILE_READERS[kind](r.path, opts)
            return
        for n, line in text_io.read_range_lines(r):
            if kind == "librispeech":
                doc = parse_librispeech_line(r.path, line, n)
            else:
                doc = parse_line("text_jsonl" if kind == "text" else kind, r.path, line, n)
            if doc is not None:
                yield {**doc, "source": kind}
    except (OSError, ValueError) as e:
        reason = "missing_file" if isinstance(e, FileNotFoundError) else (
            "unreadable" if isinstance(e, OSError) else "bad_record")
        yield _error(text_io.basename(r.path), kind, reason, f"{r.path}: {type(e).__name__}: {e}")


def read_file_or_error(path: str, kind: str, opts: ReaderOptions = ReaderOptions()) -> Iterator[dict]:
    """Every document of one input file (or one error record if it cannot be read)."""
    return range_documents(text_io.ReadRange(path), kind, opts)


def read_documents(kind: str, pattern: str, opts: ReaderOptions = ReaderOptions()) -> Iterator[dict]:
    """Every document of every file matching `pattern` (the plain, Beam-free path)."""
    for path in expand_input(kind, pattern):
        yield from read_file_or_error(path, kind, opts)
