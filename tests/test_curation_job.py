"""The curation job end to end (Beam, in-process runner): rejects by rule, a summary that balances,
the same kept documents whatever the shard count or input order, the report, and `--curate`."""

import json
import random

from pipelines import job_summary, preprocess_text
from pipelines.curation import curate, synthetic

RUNNER = "--runner=FnApiRunner"


def _corpus(tmp_path):
    rng = random.Random(0)
    good = {f"g{i:02d}": synthetic.good_document(random.Random(100 + i)) for i in range(10)}
    heldout = synthetic.good_document(random.Random(999))
    trippers = synthetic.rule_trippers(random.Random(1))
    records = [{"id": k, "text": v} for k, v in good.items()]
    records += [{"id": "a-copy", "text": good["g00"].replace(" ", "  ")},  # exact duplicate once normalised
                {"id": "g01-edit", "text": good["g01"].replace("The road", "A road", 1)},  # near duplicate
                {"id": "german", "text": "Der Hund läuft schnell über die Straße und bellt laut. " * 12},
                {"id": "leak", "text": good["g02"][:300] + "\n\n" + heldout.split("\n\n")[1]},
                *({"id": f"trip-{k}", "text": trippers[k]} for k in ("gopher_short_doc", "gopher_too_many_bullets",
                                                                       "dup_line_frac", "top_2_gram"))]
    rng.shuffle(records)
    lines = [json.dumps(r) for r in records] + ['{"id": "broken", "text": ']
    held = heldout.split("\n\n")[1:]  # (its first sentence is every generated document's)
    (tmp_path / "heldout.jsonl").write_text(json.dumps({"text": "\n\n".join(held)}) + "\n")
    return lines, len(records) + 1


EXPECTED = {"g00": "exact_duplicate", "g01-edit": "near_duplicate", "german": "language_de", "broken": "bad_record",
            "leak": "contaminated_heldout", "trip-gopher_short_doc": "gopher_short_doc",
            "trip-gopher_too_many_bullets": "gopher_too_many_bullets", "trip-dup_line_frac": "dup_line_frac",
            "trip-top_2_gram": "top_2_gram"}


def _run(tmp_path, lines, name, num_shards, rounds):
    (tmp_path / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / f"out_{name}"
    summary = curate.main([f"--input={tmp_path}/{name}.jsonl", f"--output_dir={out}", f"--num_shards={num_shards}",
                           f"--cc_rounds={rounds}", f"--eval_set=heldout=text:{tmp_path}/heldout.jsonl", RUNNER])
    return out, summary


def test_curation_job_rejects_by_rule_and_keeps_the_same_documents_in_any_sharding(tmp_path):
    lines, n = _corpus(tmp_path)
    out, summary = _run(tmp_path, lines, "a", num_shards=3, rounds=2)
    rejects = {r["id"]: r for r in curate.read_rejects(str(out))}
    assert {k: r["reason"] for k, r in rejects.items()} == EXPECTED
    assert rejects["g00"]["detail"] == "duplicate of a-copy" and rejects["g01-edit"]["detail"] == "duplicate of g01"
    assert summary["documents_in"] == n and summary["balanced"]
    assert summary["kept"] == n - len(EXPECTED) and summary["dropped_by_stage"]["quality"] == {
        "gopher_short_doc": 1, "gopher_too_many_bullets": 1}
    kept = curate.read_kept(str(out))
    assert sorted(d["id"] for d in kept) == sorted(["a-copy", "g01"] + [f"g{i:02d}" for i in range(2, 10)])
    assert len(list(out.glob("documents-*-of-00003.jsonl"))) == 3

    out2, summary2 = _run(tmp_path, lines[::-1], "b", num_shards=5, rounds=0)  # other order, shards, rounds
    assert sorted(map(json.dumps, curate.read_kept(str(out2)))) == sorted(map(json.dumps, kept))
    assert {r["id"]: r["reason"] for r in curate.read_rejects(str(out2))} == EXPECTED
    assert summary2["dropped_by_rule"] == summary["dropped_by_rule"]

    md, html = (out / "report.md").read_text(), (out / "report.html").read_text()
    assert "| repetition | dup_line_frac | 1 | " in md and "| near_dedup | near_duplicate | 1 |" in md
    assert html.count("<svg") >= 10 and "gopher_too_many_bullets" in html


def test_text_job_curates_before_tokenizing(tmp_path):
    lines, _ = _corpus(tmp_path)
    (tmp_path / "docs.jsonl").write_text("\n".join(lines) + "\n")
    cache = tmp_path / "cache"
    summary = preprocess_text.main([f"--input={tmp_path}/docs.jsonl", f"--cache_dir={cache}", "--task=t",
                                    "--curate", "--no-near_dedup", "--languages=", "--num_shards=2", RUNNER])
    curated = curate.read_summary(str(cache / "t" / "curated.train"))
    assert curated["dropped_by_rule"]["exact_duplicate"] == 1 and "near_duplicate" not in curated["dropped_by_rule"]
    assert "language_de" not in curated["dropped_by_rule"]  # --languages= turns language ID off
    assert summary["documents_in"] == curated["kept"] == summary["documents_out"]
    assert job_summary.read_summary(str(cache), "t", "train")["balanced"]


def test_bad_flags_are_clear_errors(tmp_path, capsys):
    (tmp_path / "a.jsonl").write_text('{"text": "x"}\n')
    for flags, message in ((["--eval_set=quiz:/x"], "kind one of"), (["--minhash_bands=0"], "bands must be >= 1")):
        try:
            curate.main([f"--input={tmp_path}/a.jsonl", f"--output_dir={tmp_path}/o", RUNNER, *flags])
        except SystemExit as e:
            assert e.code == 2
        else:
            raise AssertionError(f"{flags} accepted")
        assert message in capsys.readouterr().err


def test_language_verdicts():
    from pipelines.curation import langid

    ident, cfg = langid.LanguageIdentifier(), langid.LangIdConfig(("en",), min_probability=0.5)
    lang, prob = ident.identify(synthetic.good_document(random.Random(0)))
    assert lang == "en" and langid.language_verdict(lang, prob, cfg) is None
    assert langid.language_verdict("fr", 0.99, cfg) == ("language_fr", 0.99)
    assert langid.language_verdict("en", 0.2, cfg) == ("language_low_confidence", 0.2)
