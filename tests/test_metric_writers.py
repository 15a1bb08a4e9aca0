"""metrics.jsonl as the run stands: a restart's redone steps replace the abandoned ones."""
from model.metric_writers import JsonlWriter, read_jsonl


def test_redone_steps_replace_the_killed_runs_rows(tmp_path):
    path = tmp_path / "metrics.jsonl"
    w = JsonlWriter(path)
    for step in (1, 2, 3, 4):  # killed after logging step 4; last checkpoint at step 2
        w.write(step, "train", {"loss": 10.0 - step})
    w.write(2, "eval", {"loss": 9.0})
    for step in (3, 4, 5):  # the restarted run redoes steps 3 and 4
        w.write(step, "train", {"loss": 100.0 + step})
    w.close()
    with open(path, "a") as f:
        f.write('{"step": 6, "spl')  # a cut last line
    train = read_jsonl(path, "train")
    assert [(r["step"], r["loss"]) for r in train] == [(1, 9.0), (2, 8.0), (3, 103.0), (4, 104.0),
                                                       (5, 105.0)]
    assert [(r["step"], r["split"]) for r in read_jsonl(path)] == [
        (1, "train"), (2, "train"), (2, "eval"), (3, "train"), (4, "train"), (5, "train")]
