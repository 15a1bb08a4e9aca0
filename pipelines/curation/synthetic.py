"""Generated documents for the curation tests and benchmark: each trips one rule, or none.

    good_document(rng)                 ~220 words of varied English-like prose: passes every rule
    rule_trippers(rng)                 {reason: document} for each Gopher rule (quality and repetition)
    near_duplicate_pair(rng, jaccard)  two documents whose word 5-gram sets have that Jaccard similarity

Deterministic from the `random.Random` passed in.
"""

from __future__ import annotations

import random
import string

# A few hundred common English words, stop words included, so generated prose
# passes the quality rules and rarely repeats an n-gram.
VOCAB = """the be to of and a in that have it for not on with he as you do at this but his by from they we
say her she or an will my one all would there their what so up out if about who get which go me when make can
like time no just him know take people into year your good some could them see other than then now look only
come its over think also back after use two how our work first well way even new want because any these give
day most us river garden window letter morning evening winter summer road bridge market village harbour
forest valley mountain station library kitchen teacher doctor farmer sailor painter writer student
quickly slowly gently loudly quietly carefully happily early late often rarely always never sometimes
bright dark warm cold quiet busy small large old young green blue yellow heavy light simple strange
walked carried opened closed watched answered followed painted wrote built crossed found lost remembered
bread apple stone paper candle basket lantern blanket chair table door wall roof field stream cloud""".split()


def sentence(rng: random.Random, n_words: int) -> str:
    words = [rng.choice(VOCAB) for _ in range(n_words)]
    return " ".join(words).capitalize() + "."


def good_document(rng: random.Random, n_sentences: int = 20) -> str:
    """Paragraphs of varied sentences with the stop words spelled out."""
    sentences = [sentence(rng, rng.randint(8, 14)) for _ in range(n_sentences)]
    sentences[0] = "The road to the village and the river is long, with a bridge that we have to cross. " + sentences[0]
    paras = [" ".join(sentences[i:i + 4]) for i in range(0, len(sentences), 4)]
    return "\n\n".join(paras)


def rule_trippers(rng: random.Random) -> dict[str, str]:
    """One generated document per rule (reason name as DataTrove and quality.py/repetition.py give it)."""
    good = lambda: good_document(rng)  # noqa: E731
    filler = [sentence(rng, 10) for _ in range(30)]
    return {
        "gopher_short_doc": "The cat sat with the dog and they have a nap. It was nice.",
        "gopher_long_doc": " ".join(rng.choice(VOCAB) for _ in range(100_050)) + " the and",
        "gopher_below_avg_threshold": " ".join(rng.choice(["a", "to", "of", "an", "be", "the", "and", "is"])
                                               + (" with" if i % 50 == 0 else "") for i in range(120)) + " that.",
        "gopher_above_avg_threshold": "The and with " + " ".join(
            rng.choice(["internationalisation", "telecommunications", "counterrevolutionary",
                        "uncharacteristically", "incomprehensibilities"]) + str(i) for i in range(80)) + ".",
        "gopher_too_many_hashes": good() + "\n" + " ".join("#tag" for _ in range(60)),
        "gopher_too_many_ellipsis": good().replace(".", "...") + " wait... " * 30,
        "gopher_too_many_bullets": "\n".join(f"- {s}" for s in filler),
        "gopher_too_many_end_ellipsis": "\n".join(s[:-1] + "..." if i % 2 else s for i, s in enumerate(filler)),
        "gopher_below_alpha_threshold": good() + "\n" + " ".join(str(rng.randint(0, 10**6)) for _ in range(90)),
        "gopher_enough_stop_words": " ".join(w for w in good().split() if w.strip(".,").lower() not in
                                             {"the", "be", "to", "of", "and", "that", "have", "with"})
                                    + " the the the",
        "dup_para_frac": "\n\n".join([good_document(rng, 2)] + ["Short repeated paragraph here."] * 3),
        "dup_line_frac": "\n".join(filler[:12] + ["a line that repeats"] * 8),
        "top_2_gram": good() + " " + " ".join(["alpha beta"] * 150),
        "duplicated_5_n_grams": good() + " " + " ".join([sentence(random.Random(7), 30)] * 4),
    }


def near_duplicate_pair(rng: random.Random, jaccard: float, n_shared: int = 300, n: int = 5) -> tuple[str, str]:
    """Two documents whose word n-gram sets have Jaccard similarity close to `jaccard`.

    Built from a stream of distinct random tokens (so every n-gram is distinct): the two
    documents share one run of words and each has a private run; with s shared and p
    private n-grams per document, J = s / (s + 2p)."""
    n_shared = max(n_shared, n)
    shared_grams = n_shared - n + 1
    private_grams = round(shared_grams * (1 - jaccard) / (2 * jaccard))
    tokens = ["".join(rng.choices(string.ascii_lowercase, k=10))  # letters only: simplify_text keeps them
              for _ in range(n_shared + 2 * (private_grams + n - 1))]
    shared = tokens[:n_shared]
    a_priv = tokens[n_shared:n_shared + private_grams + n - 1]
    b_priv = tokens[n_shared + private_grams + n - 1:]
    # Each private run adds exactly private_grams n-grams: n-1 across the boundary, the rest inside it.
    return " ".join(shared + a_priv[: private_grams]), " ".join(shared + b_priv[: private_grams])
