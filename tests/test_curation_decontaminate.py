"""Decontamination: every planted MMLU question is removed, nothing else is (real MMLU CSVs)."""

import csv
import random

import pytest

from pipelines.curation import decontaminate as dc
from pipelines.curation import synthetic

SUBJECTS = ("anatomy", "global_facts", "college_physics", "high_school_geography", "world_religions")


@pytest.fixture(scope="module")
def mmlu(data_dir):
    paths = [data_dir / "mmlu" / "test" / f"{s}_test.csv" for s in SUBJECTS]
    if not all(p.exists() for p in paths):
        pytest.skip(f"MMLU test CSVs not found under {data_dir / 'mmlu' / 'test'}")
    rows = [row for p in paths for row in csv.reader(p.open(encoding="utf-8"))]
    index = dc.NgramIndex.build({"mmlu": [i for p in paths for i in dc.read_eval_items("mmlu", str(p))]})
    return rows, index


def _planted(row, rng):
    q, choices = row[0], row[1:5]
    style = rng.randrange(3)
    if style == 0:  # the prompt our MMLU task shows
        item = q + "\n" + "\n".join(f"{l}. {c}" for l, c in zip("ABCD", choices)) + "\nAnswer:"
    elif style == 1:  # a quiz page: choices inline
        item = f"Quiz time! {q} (a) {choices[0]} (b) {choices[1]} (c) {choices[2]} (d) {choices[3]}"
    else:  # question and choices pasted as they are
        item = q + " " + " ".join(choices)
    return synthetic.good_document(rng, 8) + "\n\n" + item + "\n\n" + synthetic.good_document(rng, 4)


def test_every_planted_question_is_removed_and_nothing_else(mmlu, data_dir):
    rows, index = mmlu
    rng = random.Random(0)
    planted = [_planted(row, rng) for row in rng.sample(rows, 60)]
    clean = [synthetic.good_document(random.Random(1000 + i)) for i in range(100)]
    book = (data_dir / "text" / "gutenberg" / "11-0.txt").read_text(encoding="utf-8")
    clean += [book[i:i + 3000] for i in range(0, 60000, 3000)]  # real prose, questions' words included
    assert all(dc.decontaminate(d, index)[0] is None for d in planted)
    assert all(dc.decontaminate(d, index)[1] == 0 for d in clean)


def test_cut_mode_removes_only_the_matching_span(mmlu):
    rows, index = mmlu
    row = next(r for r in rows if len(r[0].split()) >= 20)
    doc = "Before the quote we talk about the weather.\n" + row[0] + "\nAfter it we talk about the sea."
    kept, matches, which = dc.decontaminate(doc, index, "cut")
    assert which == "mmlu" and matches >= len(row[0].split()) - 12
    assert kept.startswith("Before the quote we talk about the weather.") and kept.endswith("talk about the sea.")
    assert row[0].split()[5] not in kept.split()[8:-6]


def test_short_items_match_whole_and_tiny_ones_never():
    index = dc.NgramIndex.build({"qa": ["What is the capital city of old Peru today?",  # 9 words: whole item
                                       "Who won?"]})  # 2 words: below min_words, ignored
    assert dc.decontaminate("Quiz: what is the capital city of old Peru, today? Lima.", index)[0] is None
    assert dc.decontaminate("They asked who won? Nobody knew.", index)[1] == 0
    assert dc.decontaminate("What is the capital city of old Spain today?", index)[1] == 0


def test_eval_set_specs_are_checked():
    assert dc.parse_eval_set("mmlu:/data/mmlu") == ("mmlu", "mmlu", "/data/mmlu")
    assert dc.parse_eval_set("heldout=text:gs://b/x/*.jsonl") == ("heldout", "text", "gs://b/x/*.jsonl")
    with pytest.raises(ValueError, match="kind one of"):
        dc.parse_eval_set("nope:/x")


def test_score_document_cuts_or_drops_by_mode():
    from pipelines.curation import transforms

    held = synthetic.good_document(random.Random(5)).split("\n\n")[2]
    index = dc.NgramIndex.build({"heldout": [held]})
    doc = {"id": "d", "text": synthetic.good_document(random.Random(6)) + "\n\n" + held}
    cfg = transforms.CurationConfig(langid=None, quality=None, repetition=None, eval_sets=("text:x",),
                                    decontamination_mode="cut")
    kept, rejected, signals = transforms.score_document(doc, cfg, None, index)
    assert rejected is None and held not in kept["text"] and kept["text"].startswith(doc["text"][:200])
    assert signals["decontamination_cut_ngrams"] == len(held.split()) - 12
    drop = transforms.CurationConfig(langid=None, quality=None, repetition=None, eval_sets=("text:x",))
    kept, rejected, _ = transforms.score_document(doc, drop, None, index)
    assert kept is None and rejected["reason"] == "contaminated_heldout" and rejected["stage"] == "decontamination"
