"""Metrics against hand computations and the reference libraries."""
import math

import jiwer
import numpy as np
import pytest
from whisper_normalizer.english import EnglishTextNormalizer

from model.evaluation import asr, lm, long_context, mmlu, stats, video_qa


def _q(subject, correct, label=1):
    """A record whose argmax is `label` when correct, else label+1 (mod 4)."""
    ll = [-3.0, -3.0, -3.0, -3.0]
    ll[label if correct else (label + 1) % 4] = -0.5
    return {"subject": subject, "loglikelihoods": ll, "label": label}


def test_mmlu_aggregate_matches_hand_computation():
    records = ([_q("anatomy", c) for c in (1, 1, 0, 1)]
               + [_q("philosophy", c, label=3) for c in (0, 0, 1)]
               + [_q("astronomy", c, label=0) for c in (1, 1)])
    m = mmlu.aggregate(records)
    s = m["subjects"]
    assert s["anatomy"]["acc"] == 0.75 and s["anatomy"]["acc_stderr"] == pytest.approx(0.25)
    assert s["philosophy"]["acc"] == pytest.approx(1 / 3)
    assert s["philosophy"]["acc_stderr"] == pytest.approx(1 / 3)  # sqrt(1/3) / sqrt(3)
    assert s["astronomy"]["acc"] == 1.0 and s["astronomy"]["acc_stderr"] == 0.0
    stem = m["categories"]["stem"]
    assert stem["acc"] == pytest.approx(5 / 6) and stem["n"] == 6
    # lm-eval pooled_sample_stderr: ((4-1)*.25^2*4 + (2-1)*0*2) / (6-2), / 6, sqrt
    assert stem["acc_stderr"] == pytest.approx(math.sqrt(0.75 / 4 / 6))
    assert m["categories"]["humanities"]["acc"] == pytest.approx(1 / 3)
    assert set(m["categories"]) == {"stem", "humanities"}
    o = m["overall"]
    assert o["acc"] == pytest.approx(6 / 9) and o["n"] == 9 and o["num_subjects"] == 3
    assert o["acc_macro"] == pytest.approx((0.75 + 1 / 3 + 1.0) / 3)
    pooled_var = (3 * 0.25**2 * 4 + 2 * (1 / 3) ** 2 * 3 + 0) / (9 - 3)
    assert o["acc_stderr"] == pytest.approx(math.sqrt(pooled_var / 9))
    assert o["acc_macro_stderr"] == pytest.approx(math.sqrt(0.25**2 + (1 / 3) ** 2) / 3)


def test_mmlu_ties_go_to_first_choice_and_unknown_subject_fails():
    assert mmlu.predict([-1.0, -0.5, -0.5, -2.0]) == 1
    with pytest.raises(KeyError, match="unknown MMLU subject 'anatomyy'"):
        mmlu.aggregate([{"subject": "anatomyy", "loglikelihoods": [0, 0, 0, 0], "label": 0}])
    assert len(mmlu.SUBJECT_CATEGORIES) == 57
    assert set(mmlu.SUBJECT_CATEGORIES.values()) == set(mmlu.CATEGORIES)


def test_stderr_helpers():
    assert stats.mean_stderr([1.0]) != stats.mean_stderr([1.0])  # nan for n < 2
    assert stats.mean_stderr([0, 1, 0, 1]) == pytest.approx(np.std([0, 1, 0, 1], ddof=1) / 2)
    with pytest.raises(ValueError, match="one size per stderr"):
        stats.pooled_stderr([0.1], [1, 2])


PAIRS = [
    ("Mr. Smith paid ten dollars.", "mister smith paid $10"),
    ("The colour of the sky is grey", "the color of sky is gray today"),
    ("HE HOPED THERE WOULD BE STEW FOR DINNER", "he hoped there would be a stew for diner"),
    ("It's okay", ""),
]


def test_wer_equals_jiwer_corpus_wer_after_whisper_normalisation():
    norm = EnglishTextNormalizer()
    refs, hyps = [norm(r) for r, _ in PAIRS], [norm(h) for _, h in PAIRS]
    expected = jiwer.process_words(refs, hyps)
    got = asr.score_corpus([r for r, _ in PAIRS], [h for _, h in PAIRS])
    assert got["wer"] == pytest.approx(expected.wer)
    assert (got["substitutions"], got["deletions"], got["insertions"]) == (
        expected.substitutions, expected.deletions, expected.insertions)
    edits = got["substitutions"] + got["deletions"] + got["insertions"]
    assert got["wer"] == pytest.approx(edits / got["reference_units"])
    # Hand check of the first pair: normalisation makes it an exact match.
    assert got["per_utterance"][0]["wer"] == 0.0
    assert got["per_utterance"][0]["hypothesis_norm"] == "mister smith paid $10"
    # Second: "the color of sky is gray today" vs ref "the color of the sky is gray":
    # one deletion ("the") and one insertion ("today") over 7 words.
    u = got["per_utterance"][1]
    assert (u["deletions"], u["insertions"], u["substitutions"]) == (1, 1, 0)
    assert u["wer"] == pytest.approx(2 / 7)
    assert got["per_utterance"][3]["wer"] == 1.0  # everything deleted


def test_cer_option_and_errors():
    got = asr.score_corpus(["猫が好き"], ["犬が好き"], language="ja", unit="char")
    assert got["cer"] == pytest.approx(0.25)
    with pytest.raises(ValueError, match="unit must be"):
        asr.score_corpus(["a"], ["a"], unit="phone")
    with pytest.raises(ValueError, match="1 references but 2 hypotheses"):
        asr.score_corpus(["a"], ["a", "b"])


def test_bits_per_byte_hand_formula():
    docs = [{"nll": 10.0, "num_tokens": 4, "num_bytes": 12},
            {"nll": 5.0, "num_tokens": 2, "num_bytes": 8}]
    m = lm.aggregate(docs)
    assert m["bits_per_byte"] == pytest.approx(15.0 / (20 * math.log(2)))
    assert m["token_perplexity"] == pytest.approx(math.exp(15.0 / 6))
    with pytest.raises(ValueError, match="total_bytes must be positive"):
        lm.bits_per_byte(1.0, 0)


@pytest.mark.parametrize("text,expected", [
    ("B", 1), ("(c) the dog", 2), ("D. none", 3), ("The answer is (a)", 0),
    ("answer: E", 4), ("a dog", None), ("I don't know", None), ("", None), ("F", None),
    # The article is not choice A; a lower-case letter after "answer is" is a choice.
    ("A dog is running", None), ("A cat", None), ("the answer is b", 1), ("Answer:d", 3),
    ("The answer is a dog", None), ("The answer is A because", 0), ("A. a dog", 0),
    ("A", 0), ("a", 0), ("b.", 1), ("e) x", 4), ("**C**", 2),
    ("I think the correct answer is option C.", 2), ("The correct choice is (e)", 4),
])
def test_parse_choice_is_deterministic(text, expected):
    assert video_qa.parse_choice(text, 5) == expected


def test_parse_choice_falls_back_to_the_option_text():
    options = ["a cat sleeps", "a dog is running", "the man", "x", "y"]
    assert video_qa.parse_choice("A dog is running.", 5, options) == 1  # not letter A
    assert video_qa.parse_choice("The man", 5, options) == 2
    assert video_qa.parse_choice("a dog", 5, options) is None  # no option says just that


def test_video_qa_scores():
    mc = video_qa.score_multiple_choice([
        {"output": "(b) x", "label": 1, "options": list("vwxyz"), "type": "CW"},
        {"output": "maybe", "label": 0, "options": list("vwxyz"), "type": "TN"},
        {"output": "C", "label": 0, "options": list("vwxyz"), "type": "DC"},
        {"output": "z", "label": 4, "options": list("vwxyz"), "type": "CH"},
    ])
    assert mc["acc"] == 0.5 and mc["unparseable"] == 0.25
    assert mc["per_type_group"]["causal"]["acc"] == 1.0
    assert mc["per_type_group"]["temporal"]["acc"] == 0.0
    oe = video_qa.score_open_ended([
        {"output": "Yes.", "answer": "yes", "type": 3},
        {"output": "the red one", "answer": "red one", "type": 4},
        {"output": "two", "answer": "2", "type": 7},
    ])
    assert oe["exact_match"] == pytest.approx(2 / 3)
    assert oe["per_type"]["yes_no"]["exact_match"] == 1.0
    assert oe["per_type"]["number"]["exact_match"] == 0.0


def test_power_law_fit_recovers_parameters():
    x = np.arange(1, 513, dtype=np.float64)
    y = long_context.power_law(x, 3.0, -0.4, 2.0)
    fit = long_context.fit_power_law(y)
    assert fit["a"] == pytest.approx(3.0, rel=1e-3)
    assert fit["b"] == pytest.approx(-0.4, rel=1e-3)
    assert fit["c"] == pytest.approx(2.0, rel=1e-3)
    assert fit["r2"] == pytest.approx(1.0)


def test_nll_by_position_and_needles():
    mean = long_context.mean_nll_by_position([[4.0, 2.0, 1.0], [2.0, 2.0]])
    np.testing.assert_allclose(mean, [3.0, 2.0, 1.0])
    np.testing.assert_allclose(long_context.cumulative_average(mean), [3.0, 2.5, 2.0])
    grid = long_context.niah_grid([
        {"context_length": 128, "depth": 0.0, "recalled": True},
        {"context_length": 128, "depth": 0.0, "recalled": False},
        {"context_length": 256, "depth": 0.5, "recalled": True},
    ])
    assert grid["recall"] == [[0.5, None], [None, 1.0]]
    assert long_context.needle_recalled("The number is 7 4 9 2.", "7492")
