"""Video QA eval inputs: options and answer of a multiple-choice prompt, question types."""
from __future__ import annotations


def parse_choices(prompt_text: str, answer: str) -> tuple[list[str], int]:
    """Options and answer index of a multiple-choice prompt in the format of
    `pipelines.mm_readers.read_nextqa`: "...options: (a) x (b) y ...\nanswer:" with the
    answer "(b) y". Returns ([], -1) when the prompt lists no options."""
    import re

    line = next((l for l in prompt_text.split("\n") if l.startswith("options: ")), "")
    parts = re.split(r"(?:^options: | )\(([a-z])\) ", line)
    letters, options = parts[1::2], parts[2::2]
    if not options or letters != [chr(ord("a") + i) for i in range(len(letters))]:
        return [], -1
    m = re.match(r"\s*\(([a-z])\)", answer)
    label = letters.index(m.group(1)) if m and m.group(1) in letters else -1
    return options, label


def question_type(source: str, source_id: str) -> str | None:
    """The question type a cached video-QA example carries, or None: NExT-QA's (CW, TN,
    DC, ...) is the last field of its id, "nextqa:<video>:<qid>:<type>"
    (pipelines/mm_readers.read_nextqa)."""
    if source == "nextqa":
        parts = source_id.split(":")
        if len(parts) == 4 and parts[3]:
            return parts[3]
    return None
