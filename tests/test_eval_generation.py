"""Decoding suites with a model stub (fixed outputs), and the NIAH prompt builder."""
import json

import pytest

from model.evaluation import asr, generation, scoring, suites
from tasks import eval_inputs

WORDS = ["<pad>", "<eos>", "he", "hoped", "there", "would", "be", "stew", "for", "dinner",
         "(b)", "(c)", "7654321", "maybe"]


def detok(ids):
    return " ".join(WORDS[i] for i in ids)


def stub_generate(outputs):
    """A model stub: the output for a prompt is looked up by its first token."""
    def generate(prompts, max_new_tokens):
        assert all(isinstance(p, list) for p, _ in prompts)
        return [outputs[p[0]][:max_new_tokens] + [1, 5, 5] for p, _ in prompts]
    return generate


def _ctx(tmp_path, outputs):
    return suites.Context(scoring.BatchedScorer(lambda b, p: None, 16, 1), tmp_path, progress=False,
                          generate=stub_generate(outputs), detokenize=detok)


def test_asr_suite_wer_equals_corpus_wer(tmp_path):
    records = [
        {"sample_id": "u0", "prompt_ids": [100, 7], "answer": "HE HOPED THERE WOULD BE STEW FOR DINNER"},
        {"sample_id": "u1", "prompt_ids": [101], "answer": "STEW FOR DINNER"},
    ]
    outputs = {100: [2, 3, 4, 5, 6, 7, 9], 101: [7, 8, 8, 9]}  # deletion "for"; insertion "for"
    res = generation.GenerationSuite(inputs_fn=lambda: records, name="asr", metric="wer").run(
        _ctx(tmp_path, outputs))
    expected = asr.score_corpus([r["answer"] for r in records],
                                ["he hoped there would be stew dinner", "stew for for dinner"])
    assert res.metrics["wer"] == pytest.approx(expected["wer"]) == pytest.approx(2 / 11)
    assert (res.metrics["deletions"], res.metrics["insertions"]) == (1, 1)
    lines = [json.loads(l) for l in (tmp_path / "samples_asr.jsonl").read_text().splitlines()]
    by_id = {l["sample_id"]: l for l in lines}
    assert by_id["u1"]["output"] == "stew for for dinner"  # cut at EOS
    assert by_id["u1"]["wer"] == pytest.approx(1 / 3)
    assert (tmp_path / "samples_asr.jsonl").exists() and len(lines) == 2


def test_multiple_choice_and_niah_suites(tmp_path):
    mc = [{"sample_id": f"q{i}", "prompt_ids": [100 + i], "answer": "(b) x",
           "meta": {"options": ["w", "x", "y"], "label": 1, "type": "CW"}} for i in range(3)]
    outputs = {100: [10], 101: [11], 102: [13]}
    res = generation.GenerationSuite(inputs_fn=lambda: mc, name="mc",
                                     metric="multiple_choice").run(_ctx(tmp_path, outputs))
    assert res.metrics["acc"] == pytest.approx(1 / 3)
    assert res.metrics["unparseable"] == pytest.approx(1 / 3)
    niah = [{"sample_id": f"n{i}", "prompt_ids": [100 + i], "answer": "7654321",
             "meta": {"context_length": 128 * (1 + i % 2), "depth": 0.5}} for i in range(2)]
    res = generation.GenerationSuite(inputs_fn=lambda: niah, name="niah", metric="contains").run(
        _ctx(tmp_path, {100: [12], 101: [13]}))
    assert res.metrics["recall"] == [[1.0, 0.0]]
    assert any(f.name == "niah_heatmap" for s in res.sections for f in s.figures)
    with pytest.raises(ValueError, match="metric must be one of"):
        generation.GenerationSuite(inputs_fn=lambda: niah, name="x", metric="bleu")


def test_readable_prompt_shows_media_runs_and_stop_strings_cut_outputs(tmp_path):
    prompt = [4, 3, 3, 3, 5, 2, 7, 6, 8]
    assert eval_inputs.readable_prompt(prompt, detok) == "<image x3>he<audio x1>"
    recs = [{"sample_id": "s", "prompt_ids": [100], "answer": "stew"}]
    words = WORDS + ["\n"]
    ctx = _ctx(tmp_path, {100: [7, 14, 9]})
    ctx.detokenize = lambda ids: "".join(words[i] for i in ids)
    res = generation.GenerationSuite(inputs_fn=lambda: recs, name="oe", metric="exact_match").run(ctx)
    assert res.metrics["exact_match"] == 1.0  # "stew\ndinner" is cut at the newline


def test_insert_needle_moves_to_a_sentence_start():
    assert eval_inputs.insert_needle([1, 2, 3, 4], [9], 0.5) == [1, 2, 9, 3, 4]
    assert eval_inputs.insert_needle([1, 7, 3, 4, 5], [9], 0.8, boundary_ids=[7]) == [1, 7, 9, 3, 4, 5]


@pytest.mark.real_data
def test_niah_prompts_on_gutenberg(data_dir):
    book = data_dir / "text" / "gutenberg" / "11-0.txt"
    recs = eval_inputs.niah_prompts([str(book)], context_lengths=(128, 256), depths=(0.0, 0.5, 1.0))
    assert len(recs) == 6 and len({r["answer"] for r in recs}) == 6
    decode = eval_inputs.detokenizer()
    for r in recs:
        assert len(r["prompt_ids"]) <= r["meta"]["context_length"]
        text = decode(r["prompt_ids"])
        assert f"The special magic number is {r['answer']}." in text
        assert text.endswith("The special magic number is")
    mid = decode(recs[1]["prompt_ids"])
    before = mid.split(" The special magic number")[0]
    assert before.rstrip()[-1] in ".!?"  # the needle starts a sentence
    assert recs == eval_inputs.niah_prompts([str(book)], context_lengths=(128, 256),
                                            depths=(0.0, 0.5, 1.0))  # seeded


def test_slots_metric_scores_colour_and_shape(tmp_path):
    vocab = {"colour": ["red", "green", "blue"], "shape": ["circle", "square"]}
    assert generation.slot_values("A Red square, on the left.", vocab) == {"colour": "red", "shape": "square"}
    words = WORDS + ["a", "red", "green", "circle", "square", "left"]
    recs = [{"sample_id": "c0", "prompt_ids": [100], "answer": "a red circle on the left"},
            {"sample_id": "c1", "prompt_ids": [101], "answer": "a green square on the left"}]
    ctx = _ctx(tmp_path, {100: [14, 15, 17, 18], 101: [14, 16, 17]})
    ctx.detokenize = lambda ids: " ".join(words[i] for i in ids)
    res = generation.GenerationSuite(inputs_fn=lambda: recs, name="captions", metric="slots",
                                     slot_vocab=vocab).run(ctx)
    assert res.metrics["exact_match"] == 0.5
    assert res.metrics["per_slot"]["colour"]["acc"] == 1.0
    assert res.metrics["per_slot"]["shape"]["acc"] == 0.5
    with pytest.raises(ValueError, match="slot_vocab is needed"):
        generation.GenerationSuite(inputs_fn=lambda: recs, name="x", metric="slots")


@pytest.mark.real_data
def test_choices_parse_back_from_every_real_nextqa_prompt(data_dir):
    """The eval recovers options and answer from the prompts the pipelines reader writes,
    on all of NExT-QA val (real file), and the scorer marks the reference answer right."""
    import csv

    from model.evaluation import video_qa
    from pipelines import mm_readers

    path = data_dir / "video_qa" / "nextqa" / "val.csv"
    rows = list(csv.DictReader(path.open(encoding="utf-8")))
    docs = list(mm_readers.read_nextqa(str(path), mm_readers.ReaderOptions()))
    assert len(docs) == len(rows) == 4996
    for row, doc in zip(rows, docs):
        prompt, answer = doc["parts"][1]["text"], doc["parts"][2]["text"]
        options, label = eval_inputs.parse_choices(prompt, answer)
        assert options == [row[f"a{i}"] for i in range(5)]
        assert label == int(row["answer"])
        assert video_qa.parse_choice(answer, 5, options) == label


@pytest.mark.real_data
def test_activitynet_answers_from_the_real_files_score_as_exact_matches(data_dir):
    import json

    from model.evaluation import video_qa
    from pipelines import mm_readers

    path = data_dir / "video_qa" / "activitynet_qa" / "test_q.json"
    docs = list(mm_readers.read_activitynet_qa(str(path), mm_readers.ReaderOptions()))
    answers = json.loads((path.parent / "test_a.json").read_text())
    assert len(docs) == len(answers) == 8000
    types = {a["question_id"]: a["type"] for a in answers}
    res = video_qa.score_open_ended(
        {"output": d["parts"][2]["text"].upper() + ".", "answer": d["parts"][2]["text"],
         "type": types[d["id"]]} for d in docs)
    assert res["exact_match"] == 1.0 and res["n"] == 8000
    assert set(res["per_type"]) <= set(video_qa.ACTIVITYNET_TYPES.values())
