"""Reader studies: storage (round trip, two readers at once, a kill between saves, blinding),
worklists, and the export's statistics on a small set worked out by hand."""
from __future__ import annotations

import csv
import itertools
import json
import multiprocessing
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rrg_core import reader_stats, reader_study
from rrg_core.__main__ import main as cli
from rrg_core.reader_stats import average_ranks, bootstrap_mean, cohen_kappa, spearman
from rrg_core.reader_study import (
    ACCEPTABILITY,
    ERROR_COLUMNS,
    Comparison,
    Draft,
    Judgment,
    ReaderStudy,
    weights_identity,
    worklist,
)

REPO = Path(__file__).resolve().parents[1]
OPTIONS = {"beams": 3, "max_length": 100}


def draft(i: int, weights: str = "w", text: str | None = None) -> Draft:
    return Draft(f"s{i}", weights, "rev1", OPTIONS, text or f"Draft of study {i}.")


def judgment(reviewer: str, i: int) -> Judgment:
    """A judgment whose every field follows from ``i``: a half-written one would not match."""
    errors = {column: (i + k) % 3 for k, column in enumerate(ERROR_COLUMNS)}
    return Judgment(reviewer, list(ACCEPTABILITY)[i % 4], errors, f"comment {i} " * (i % 5), f"edited {i}")


# ---------------------------------------------------------------- storage


def test_round_trip(tmp_path):
    study = ReaderStudy(tmp_path / "sub" / "study.sqlite")
    saved = judgment("ann", 7)
    study.save_judgment(draft(7), saved)
    again = ReaderStudy(tmp_path / "sub" / "study.sqlite")  # reopened: resumable
    assert again.judgment(draft(7), "ann") == Judgment("ann", saved.acceptability,
                                                      {c: saved.count(c) for c in ERROR_COLUMNS}, saved.comments,
                                                      saved.edited_report)
    assert again.judgment(draft(7), "bob") is None
    assert again.judgment(draft(7, text="Another draft."), "ann") is None  # judged exactly the text it saw
    assert again.reviewed("judgments", "ann", "w", "rev1") == {"s7"}
    assert again.reviewed("judgments", "ann", "other", "rev1") == set()

    changed = Judgment("ann", "reject", {"severity_significant": 4}, "changed my mind", "")
    again.save_judgment(draft(7), changed)  # a second save replaces the first
    assert again.judgment(draft(7), "ann").errors["severity_significant"] == 4
    rows = again.judgment_rows()
    assert len(rows) == 1 and rows[0]["acceptability"] == "reject" and rows[0]["options"] == json.dumps(OPTIONS)
    assert rows[0]["draft"] == "Draft of study 7." and again.check() == "ok"

    again.save_comparison(draft(7), Comparison("ann", "right", "right", "B reads better"))
    assert again.comparison(draft(7), "ann") == Comparison("ann", "right", "right", "B reads better")
    assert again.comparison_rows()[0]["preferred"] == "draft"


def test_the_file_holds_only_what_it_should(tmp_path):
    study = ReaderStudy(tmp_path / "study.sqlite")
    study.save_judgment(draft(1), judgment("ann", 1))
    import sqlite3

    with sqlite3.connect(study.path) as db:
        tables = {name: [c[1] for c in db.execute(f"PRAGMA table_info({name})")]
                  for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        journal = db.execute("PRAGMA journal_mode").fetchone()[0]
    assert journal == "wal"
    assert set(tables) == {"meta", "drafts", "judgments", "comparisons"}
    assert tables["drafts"] == ["id", "study_id", "weights", "revision", "options", "draft"]
    assert not any(blob in c for columns in tables.values() for c in columns for blob in ("pixel", "image", "patient"))


@pytest.mark.parametrize("bad", [
    {"acceptability": "fine"}, {"errors": {"false_finding_significant": -1}}, {"errors": {"typo_significant": 1}},
    {"errors": {"location_significant": 1.5}},
])
def test_bad_judgments_are_refused_with_a_sentence(bad):
    fields = {"reviewer": "ann", "acceptability": "accept", **bad}
    with pytest.raises(ValueError, match=r"must be|whole number|unknown error"):
        Judgment(**fields)


def test_a_save_is_all_or_nothing(tmp_path, monkeypatch):
    study = ReaderStudy(tmp_path / "study.sqlite")

    def fail() -> str:  # called after the draft row is written, before the judgment is
        raise RuntimeError("the server dies here")

    monkeypatch.setattr(reader_study, "_now", fail)
    with pytest.raises(RuntimeError):
        study.save_judgment(draft(1), judgment("ann", 1))
    monkeypatch.undo()
    import sqlite3

    with sqlite3.connect(study.path) as db:
        assert db.execute("SELECT COUNT(*) FROM drafts").fetchone()[0] == 0
    assert study.judgment_rows() == [] and study.check() == "ok"


def _save_many(path: str, reviewer: str, n: int, barrier) -> None:
    study = ReaderStudy(path)
    barrier.wait()  # both processes start saving at the same moment
    for i in range(n):
        study.save_judgment(draft(i), judgment(reviewer, i))


def test_two_reviewers_save_at_once_from_two_processes(tmp_path):
    path, n = str(tmp_path / "study.sqlite"), 40
    ReaderStudy(path)
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    workers = [context.Process(target=_save_many, args=(path, name, n, barrier)) for name in ("ann", "bob")]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert [w.exitcode for w in workers] == [0, 0]
    _assert_complete(ReaderStudy(path), {"ann": range(n), "bob": range(n)})


def test_many_threads_share_one_study(tmp_path):
    study, n = ReaderStudy(tmp_path / "study.sqlite"), 15
    barrier = threading.Barrier(4)
    errors = []

    def run(name):
        try:
            _save_many(str(study.path), name, n, barrier)
        except Exception as err:  # reported below: a thread's exception would be lost
            errors.append(err)

    threads = [threading.Thread(target=run, args=(f"r{k}",)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    _assert_complete(study, {f"r{k}": range(n) for k in range(4)})


def _assert_complete(study: ReaderStudy, expected: dict[str, range]) -> None:
    """Every expected save is there with exactly its content; one draft row per study."""
    rows = study.judgment_rows()
    assert len(rows) == sum(len(r) for r in expected.values())
    for name, indices in expected.items():
        for i in indices:
            assert study.judgment(draft(i), name) == _stored(judgment(name, i))
    assert len({row["study_id"] for row in rows}) == max(len(r) for r in expected.values())
    assert study.check() == "ok"


def _stored(j: Judgment) -> Judgment:
    return Judgment(j.reviewer, j.acceptability, {c: j.count(c) for c in ERROR_COLUMNS}, j.comments, j.edited_report)


KILLED_WRITER = """
import sys
sys.path.insert(0, {tests!r}); sys.path.insert(0, {repo!r})
from test_reader_study import draft, judgment
from rrg_core.reader_study import ReaderStudy
study = ReaderStudy({path!r})
i = 0
while True:
    study.save_judgment(draft(i), judgment("ann", i))
    print(i, flush=True)  # printed only once the save has returned
    i += 1
"""


def test_a_server_killed_between_saves_loses_nothing_saved(tmp_path):
    path = tmp_path / "study.sqlite"
    script = KILLED_WRITER.format(tests=str(Path(__file__).parent), repo=str(REPO), path=str(path))
    writer = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    confirmed = []
    for line in writer.stdout:
        confirmed.append(int(line))
        if len(confirmed) == 30:
            writer.send_signal(signal.SIGKILL)  # mid-loop: possibly in the middle of the next save
            break
    writer.wait(timeout=30)
    study = ReaderStudy(path)
    assert study.check() == "ok"
    rows = study.judgment_rows()
    assert {f"s{i}" for i in confirmed} <= {row["study_id"] for row in rows}  # nothing saved is lost
    for row in rows:  # and the save in flight is there whole or not at all
        i = int(row["study_id"][1:])
        assert study.judgment(draft(i), "ann") == _stored(judgment("ann", i))
    import sqlite3

    with sqlite3.connect(path) as db:
        assert db.execute("SELECT COUNT(*) FROM drafts").fetchone()[0] == len(rows)


# ---------------------------------------------------------------- blinding


def test_the_draft_side_is_random_per_file_and_stable(tmp_path):
    first, second = ReaderStudy(tmp_path / "a.sqlite"), ReaderStudy(tmp_path / "b.sqlite")
    sides = [first.draft_side("ann", f"s{i}", "w", "r") for i in range(200)]
    assert 70 <= sides.count("left") <= 130  # balanced (binomial, 200 draws: outside this ~1e-5)
    assert sides == [ReaderStudy(first.path).draft_side("ann", f"s{i}", "w", "r") for i in range(200)]  # reopened
    assert sides != [second.draft_side("ann", f"s{i}", "w", "r") for i in range(200)]  # a secret key per file
    assert [first.draft_side("bob", f"s{i}", "w", "r") for i in range(200)] != sides  # and per reader


@pytest.mark.parametrize("side, choice, preferred", [
    ("left", "left", "draft"), ("left", "right", "reference"), ("right", "right", "draft"),
    ("right", "left", "reference"), ("right", "equal", "equal"),
])
def test_the_export_unblinds(side, choice, preferred):
    assert Comparison("ann", side, choice).preferred == preferred


def test_the_blinded_texts_look_alike():
    from demo.review import blind_text

    assert blind_text("Heart size normal.\n  XXXX are normal.") == "Heart size normal. … are normal."
    assert blind_text("the xxxx is clear . effusion 4.5 cm .") == "The … is clear. Effusion 4.5 cm."


# ---------------------------------------------------------------- worklists and weights


def test_worklist_of_a_dataset_split_and_of_a_folder(tmp_path):
    from model_fixtures import write_tiny_dataset  # here, not at the top: the writer processes need no torch

    data = write_tiny_dataset(tmp_path / "data")
    items = worklist(data, "test")
    assert [i.study_id for i in items] == ["test0", "test1", "test2", "test3"]
    assert items[0].reference and items[0].image_paths[0].is_file()
    sample = worklist(data, "train", sample=5, seed=3)
    assert sample == worklist(data, "train", sample=5, seed=3) and len(sample) == 5
    order = [i.study_id for i in worklist(data, "train")]
    assert [order.index(i.study_id) for i in sample] == sorted(order.index(i.study_id) for i in sample)

    folder = tmp_path / "films"
    (folder / "ward").mkdir(parents=True)
    for name in ("b.png", "ward/a.dcm", ".hidden"):
        (folder / name).write_bytes(b"x")
    assert [(i.study_id, i.reference) for i in worklist(folder)] == [("b.png", None), ("ward/a.dcm", None)]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no studies to review"):
        worklist(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        worklist(tmp_path / "missing")


@pytest.mark.real_data
def test_worklist_of_iu_xray_test(iu_xray_root):
    items = worklist(iu_xray_root, "test")
    assert len(items) == 590 and all(i.reference and 1 <= len(i.image_paths) <= 2 for i in items)
    assert len(worklist(iu_xray_root, "test", sample=20)) == 20


def test_weights_identity_follows_the_weights_file(tmp_path):
    folder = tmp_path / "my-weights"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"one")
    name, revision = weights_identity(folder, str(folder))
    assert name == "my-weights" and len(revision) == 12
    (folder / "model.safetensors").write_bytes(b"two")
    assert weights_identity(folder, None) == ("my-weights", weights_identity(folder, None)[1]) != (name, revision)
    assert weights_identity(tmp_path / "snapshots" / "abc123", "org/repo@v1") == ("org/repo", "abc123")


# ---------------------------------------------------------------- statistics, checked by hand


def test_cohen_kappa_against_textbook_values():
    # Wikipedia's example: 50 proposals, yes/yes 20, yes/no 5, no/yes 10, no/no 15 -> kappa 0.4.
    a = ["yes"] * 25 + ["no"] * 25
    b = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    assert cohen_kappa(a, b, ["yes", "no"]) == pytest.approx(0.4)
    assert cohen_kappa(a, a, ["yes", "no"]) == pytest.approx(1.0)
    assert np.isnan(cohen_kappa(["yes"] * 4, ["yes"] * 4, ["yes", "no"]))  # chance agreement is perfect


def _weighted_kappa_by_pairs(a, b, categories, power):
    """Weighted kappa as mean disagreement over the rated pairs vs over all cross pairs."""
    d = {c: i for i, c in enumerate(categories)}
    observed = sum(abs(d[x] - d[y]) ** power for x, y in zip(a, b)) / len(a)
    expected = sum(abs(d[x] - d[y]) ** power for x in a for y in b) / len(a) ** 2
    return 1 - observed / expected


def test_weighted_kappa_against_a_pairwise_definition():
    rng = np.random.default_rng(1)
    categories = list(ACCEPTABILITY)
    a = list(rng.choice(categories, 40))
    b = [c if rng.random() < 0.6 else rng.choice(categories) for c in a]
    for weighting, power in (("linear", 1), ("quadratic", 2)):
        assert cohen_kappa(a, b, categories, weighting) == pytest.approx(_weighted_kappa_by_pairs(a, b, categories, power))
    assert cohen_kappa(a, b, categories) == pytest.approx(_unweighted_kappa(a, b))


def _unweighted_kappa(a, b):
    n = len(a)
    agree = sum(x == y for x, y in zip(a, b)) / n
    chance = sum(a.count(c) * b.count(c) for c in set(a) | set(b)) / n ** 2
    return (agree - chance) / (1 - chance)


def test_spearman_against_textbook_and_tie_free_formula():
    # Wikipedia's example (IQ vs hours of TV per week): rho = -29/165.
    iq = [106, 100, 86, 101, 99, 103, 97, 113, 112, 110]
    tv = [7, 27, 2, 50, 28, 29, 20, 12, 6, 17]
    assert spearman(iq, tv) == pytest.approx(-29 / 165)
    assert list(average_ranks([10, 20, 20, 5])) == [2, 3.5, 3.5, 1]
    # With ties: Pearson of average ranks, the ranks counted by brute force.
    x, y = [0, 1, 1, 2, 0, 3, 1], [1, 1, 0, 2, 0, 2, 2]

    def rank(v):
        return [sum(u < w for u in v) + (sum(u == w for u in v) + 1) / 2 for w in v]

    assert spearman(x, y) == pytest.approx(float(np.corrcoef(rank(x), rank(y))[0, 1]))
    assert np.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_the_bootstrap_interval_matches_the_exact_resampling_distribution():
    clusters = [[1.0, 0.0], [3.0], [0.0, 2.0, 1.0]]
    result = bootstrap_mean(clusters, n_boot=20000, seed=0)
    assert result["mean"] == pytest.approx(7 / 6)
    means, n = [], len(clusters)  # all 27 equally likely resamples of 3 studies
    for pick in itertools.product(range(n), repeat=n):
        values = [v for i in pick for v in clusters[i]]
        means.append(sum(values) / len(values))
    means = np.array(means)
    assert np.mean(means < result["low"] - 1e-9) <= 0.025 + 0.01
    assert np.mean(means > result["high"] + 1e-9) <= 0.025 + 0.01
    assert result["low"] < result["mean"] < result["high"]
    assert bootstrap_mean([[2.0], [2.0, 2.0]]) == {"mean": 2.0, "low": 2.0, "high": 2.0}


def _known_set(path: Path) -> ReaderStudy:
    """Two readers, three studies (see test_export_statistics_of_a_known_set for the expected values)."""
    study = ReaderStudy(path)
    judged = {
        "ann": [({"false_finding_significant": 1}, "accept"), ({"missed_finding_significant": 2}, "minor"), ({}, "reject")],
        "bob": [({}, "accept"), ({"missed_finding_significant": 1, "missed_finding_insignificant": 1}, "major"),
                ({"location_insignificant": 1}, "reject")],
    }
    for reviewer, rows in judged.items():
        for i, (errors, accepted) in enumerate(rows):
            study.save_judgment(draft(i), Judgment(reviewer, accepted, errors))
    study.save_comparison(draft(0), Comparison("ann", "left", "left"))
    study.save_comparison(draft(1), Comparison("ann", "right", "left"))
    study.save_comparison(draft(2), Comparison("ann", "left", "equal"))
    return study


def test_export_statistics_of_a_known_set(tmp_path):
    _known_set(tmp_path / "study.sqlite")
    summary = reader_stats.export(tmp_path / "study.sqlite", tmp_path / "out", n_boot=500)
    entry = summary["weights"]["w @ rev1"]
    assert (entry["reports"], entry["studies"], entry["readers"]) == (6, 3, ["ann", "bob"])
    errors = entry["errors_per_report"]
    assert errors["all"]["significant"]["mean"] == pytest.approx(4 / 6)
    assert errors["all"]["total"]["mean"] == pytest.approx(6 / 6)
    assert errors["missed_finding"]["significant"]["mean"] == pytest.approx(3 / 6)
    assert errors["location"]["insignificant"]["mean"] == pytest.approx(1 / 6)
    assert errors["severity"]["total"] == {"mean": 0.0, "low": 0.0, "high": 0.0}
    assert entry["acceptable"]["mean"] == pytest.approx(3 / 6)
    assert entry["acceptability"] == pytest.approx({"accept": 2 / 6, "minor": 1 / 6, "major": 1 / 6, "reject": 2 / 6})
    (pair,) = entry["agreement"]
    # acceptability ann [accept, minor, reject], bob [accept, major, reject]: p_o 2/3, p_e 2/9 -> 4/7
    assert pair["readers"] == ["ann", "bob"] and pair["studies"] == 3
    assert pair["kappa_acceptability"] == pytest.approx(4 / 7)
    # errors per report ann [1, 2, 0], bob [0, 2, 1]: ranks differ by [1, 0, -1] -> 1 - 6*2/(3*8) = 0.5
    assert pair["spearman_total_errors"] == pytest.approx(0.5)
    assert entry["comparison"] == pytest.approx({"comparisons": 3, "draft": 1 / 3, "equal": 1 / 3, "reference": 1 / 3,
                                                 "left_chosen": 2 / 3})

    out = tmp_path / "out"
    with open(out / "judgments.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 and {r["reviewer"] for r in rows} == {"ann", "bob"}
    assert sum(int(r["missed_finding_significant"]) for r in rows) == 3
    with open(out / "comparisons.csv", newline="") as f:
        assert [r["preferred"] for r in csv.DictReader(f)] == ["draft", "reference", "equal"]
    assert json.loads((out / "summary.json").read_text())["weights"]["w @ rev1"]["reports"] == 6
    assert "Cohen's kappa on acceptability 0.57" in (out / "summary.md").read_text()
    for figure in ("errors", "acceptability", "comparison", "agreement"):
        assert Image.open(out / f"{figure}.png").size[0] > 300


def test_review_export_command(tmp_path, capsys):
    _known_set(tmp_path / "study.sqlite")
    assert cli(["review-export", str(tmp_path / "study.sqlite"), "--out", str(tmp_path / "out"), "--bootstrap", "50"]) == 0
    assert "6 reviews of 3 studies by ann, bob" in capsys.readouterr().out
    with pytest.raises(SystemExit) as stop:
        cli(["review-export", str(tmp_path / "nothing.sqlite"), "--out", str(tmp_path / "o")])
    assert stop.value.code == 2 and "no reader-study database" in capsys.readouterr().err
    (tmp_path / "text.sqlite").write_text("not a database at all, just some text " * 20)
    with pytest.raises(SystemExit) as stop:
        cli(["review-export", str(tmp_path / "text.sqlite"), "--out", str(tmp_path / "o")])
    assert stop.value.code == 2 and "is not a reader-study database" in capsys.readouterr().err
