"""Gopher quality and repetition rules at the paper's thresholds, on hand-built documents,
and spaCy-compatible word splitting (no spaCy needed: the cases below are spaCy 3.8's output)."""

import random

import pytest

from pipelines.curation import quality, repetition, synthetic, words

Q, R = quality.QualityConfig(), repetition.RepetitionConfig()


def q_verdict(text):
    return quality.quality_verdict(quality.quality_signals(text), Q)


def r_verdict(text):
    return repetition.repetition_verdict(repetition.repetition_signals(text), R)


@pytest.mark.parametrize("text, tokens", [
    ("Don't panic... (it's 3.5 km).", ["Do", "n't", "panic", "...", "(", "it", "'s", "3.5", "km", ")", "."]),
    ("Mr. Smith's well-known U.S. dog can't", ["Mr.", "Smith", "'s", "well", "-", "known", "U.S.", "dog", "ca",
                                               "n't"]),
    ("see https://example.com/a?b=1, then $5.", ["see", "https://example.com/a?b=1", ",", "then", "$", "5", "."]),
    ("“Curiouser and curiouser!” cried Alice", ["“", "Curiouser", "and", "curiouser", "!", "”", "cried", "Alice"]),
    ("cannot gonna e.g. 10km", ["can", "not", "gon", "na", "e.g.", "10", "km"]),
    ("he said (Alice):", ["he", "said", "(", "Alice", "):"]),  # spaCy's emoticon special case
])
def test_words_split_like_spacy_english(text, tokens):
    assert words.split_words(text) == tokens


def test_symbol_words_and_simplify_text_follow_datatrove():
    assert words.is_symbol_word("...") and words.is_symbol_word("”") and not words.is_symbol_word("n't")
    assert not words.is_symbol_word("‘")  # not in DataTrove's punctuation set: counted as a word there too
    assert words.simplify_text("Héllo,  World!\n3.14 and 42") == "hello world 0 and 0"


def _doc(n_words, word="word"):
    return " ".join(["the", "and"] + [word] * (n_words - 2))


def test_quality_word_count_and_mean_length_thresholds():
    assert q_verdict(_doc(50)) is None
    assert q_verdict(_doc(49)) == ("gopher_short_doc", 49)
    assert q_verdict(_doc(50) + " , . !") is None  # symbol-only words are not counted
    assert q_verdict(_doc(100_000)) is None and q_verdict(_doc(100_001))[0] == "gopher_long_doc"
    # mean length of "the and" + 58 x "abc" = 3 exactly: kept; "ab" pulls it under 3
    assert q_verdict(" ".join(["the", "and"] + ["abc"] * 58)) is None
    assert q_verdict(" ".join(["the", "and"] + ["abc"] * 57 + ["ab"]))[0] == "gopher_below_avg_threshold"
    assert q_verdict(" ".join(["the", "and"] + ["abcdefghij"] * 60)) is None  # mean 9.8
    assert q_verdict(" ".join(["the", "and"] + ["abcdefghijk"] * 60))[0] == "gopher_above_avg_threshold"


def test_quality_symbol_ratios_count_all_words():
    base = _doc(90)  # 90 words
    assert q_verdict(base + " #" * 10) is None  # 10 '#' / 100 tokens = 0.1: kept
    assert q_verdict(base + " #" * 11) == ("gopher_too_many_hashes", pytest.approx(11 / 101))
    assert q_verdict("... " * 10 + base) is None  # (not at line ends: that is another rule)
    assert q_verdict("… " * 11 + base)[0] == "gopher_too_many_ellipsis"


def test_quality_line_rules():
    body = _doc(60)
    lines = [body] + [f"- item {w}" for w in "abcdefghi"]  # 9 of 10 lines bulleted = 0.9: kept
    assert q_verdict("\n".join(lines)) is None
    assert q_verdict("\n".join(lines + ["• one more"]))[0] == "gopher_too_many_bullets"
    ends = [body] + ["and so on..."] * 3 + ["fine line"] * 6  # 3 of 10 end with an ellipsis: kept
    assert q_verdict("\n".join(ends)) is None
    assert q_verdict("\n".join(ends[:-1] + ["then…"]))[0] == "gopher_too_many_end_ellipsis"


def test_quality_alpha_and_stop_words():
    words_ = ["the", "and"] + ["word"] * 78  # 80 words with letters
    assert q_verdict(" ".join(words_ + ["42"] * 20)) is None  # 80 of 100 = 0.8: kept
    assert q_verdict(" ".join(words_ + ["42"] * 21))[0] == "gopher_below_alpha_threshold"
    assert q_verdict(" ".join(["the"] * 30 + ["word"] * 30)) == ("gopher_enough_stop_words", 1)  # distinct ones
    assert q_verdict(" ".join(["The", "And"] + ["word"] * 60))[0] == "gopher_enough_stop_words"  # case matters


def test_repetition_line_and_paragraph_thresholds():
    unique = [synthetic.sentence(random.Random(i), 12) for i in range(7)]
    assert r_verdict("\n".join(unique + ["dup"] * 4)) is None  # 3 duplicates of 11 lines... 0.27
    assert r_verdict("\n".join(unique + ["dup"] * 5))[0] == "dup_line_frac"  # 4 of 12 = 0.33
    long_dup = synthetic.sentence(random.Random(99), 40)
    assert r_verdict("\n".join(unique + [long_dup] * 2))[0] == "dup_line_char_frac"  # 1 of 9 lines, many chars
    paras = "\n\n".join(unique[:3] + ["again"] * 3)  # 2 of 5 paragraphs repeat
    assert r_verdict(paras)[0] == "dup_para_frac"


def test_repetition_ngram_rules_match_their_definitions():
    text = "a b c a b c a b"
    s = repetition.repetition_signals(text)
    assert s["top_2_gram"] == pytest.approx(len("a b") * 3 / len(text))  # "a b" three times
    assert s["top_3_gram"] == pytest.approx(len("a b c") * 2 / len(text))
    # 5-grams: "abcab", "bcabc", "cabca", "abcab"(repeat: +5 chars, skip 5) -> 5 of 15
    assert s["duplicated_5_n_grams"] == pytest.approx(5 / len(text))
    # Ties go to the n-gram seen first (Counter.most_common): "x y" (3 chars) before "long words" (10).
    tie = "x y long words x y long words"
    assert repetition.repetition_signals(tie)["top_2_gram"] == pytest.approx(3 * 2 / len(tie))


def test_known_difference_from_datatrove_concatenated_ngram_keys():
    # DataTrove keys repeated n-grams by "".join(words): ("ab", "c", ...) equals ("a", "bc", ...).
    # We compare word sequences, so this does not count as a repeat here (counted there).
    text = "ab c d e f g a bc d e f g"
    assert repetition.repetition_signals(text)["duplicated_5_n_grams"] == 0


def test_every_generated_rule_tripper_is_dropped_for_its_rule():
    for reason, text in synthetic.rule_trippers(random.Random(1)).items():
        verdict = q_verdict(text) if reason.startswith("gopher") else r_verdict(text)
        assert verdict is not None and verdict[0] == reason, (reason, verdict)
    for seed in range(5):
        good = synthetic.good_document(random.Random(seed))
        assert q_verdict(good) is None and r_verdict(good) is None


def test_disabled_rules_and_config_overrides():
    short = _doc(10)
    assert quality.quality_verdict(quality.quality_signals(short), quality.QualityConfig(min_words=None)) is None
    assert quality.quality_verdict(quality.quality_signals(short), quality.QualityConfig(min_words=5)) is None
