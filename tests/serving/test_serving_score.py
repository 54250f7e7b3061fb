"""`python -m serving.score`: a rows file scored offline with the toy bundle gets the
running server's scores; jsonl and csv inputs agree; bad input and a bad bundle end with
one line on stderr, exit code 2 and no output file."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys

import grpc
import numpy as np
import pytest
from rpc_helpers import row_request
from serving_fixtures import random_rows

import serving.score as score_mod
from serving._proto.embstack.v1 import inference_pb2_grpc as pb_grpc
from serving.bundle import MANIFEST

# The server scores its (micro-)batches and the scorer its chunks; rows batched
# differently can differ by float32 rounding in the models' matmuls (~1e-7), so this
# allows that and no more.
ATOL = 1e-6


@pytest.fixture(autouse=True)
def reuse_programs(bundle, monkeypatch):
    """main() verifies the bundle for real but reuses the session's loaded programs (as the
    conftest servers do): deserialising them costs ~1 s each. The subprocess test loads
    for real."""
    real = score_mod.load_bundle
    monkeypatch.setattr(score_mod, "load_bundle", lambda path, **kw: real(path, reuse=bundle.programs_by_sha256(), **kw))


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def read_scores(path) -> list[dict]:
    """Output rows as {"probability", "cluster", "version"}, typed as in jsonl."""
    text = path.read_text()
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in text.splitlines()]
    return [{"probability": float(r["probability"]), "cluster": int(r["cluster"]), "version": r["version"]}
            for r in csv.DictReader(text.splitlines())]


def score(*args) -> int:
    return score_mod.main([str(a) for a in args])


def test_offline_scores_equal_the_servers(bundle_dir, spec, start_server, tmp_path):
    rows = random_rows(spec, 50, seed=41)  # every accepted value form, some unseen tokens
    app = start_server(bundle_dir)  # on 127.0.0.1:0, stopped by the fixture
    with grpc.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        reply = pb_grpc.InferenceStub(channel).Score(row_request(rows), timeout=10)
    out = tmp_path / "scores.csv"
    # chunks of 7 rows: the last one partial, none shaped like the server's batch
    assert score("--bundle", bundle_dir, "--input", write_jsonl(tmp_path / "rows.jsonl", rows), "--output", out, "--batch-size", 7) == 0
    got = read_scores(out)
    assert [g["cluster"] for g in got] == list(reply.clusters) and set(reply.clusters) == {0, 1}
    assert {g["version"] for g in got} == {reply.bundle_version} == {"toy-v1"}
    diff = np.abs(np.array([g["probability"] for g in got]) - np.array(reply.probabilities))
    assert float(diff.max()) < ATOL


def test_jsonl_and_csv_inputs_give_the_same_output(bundle_dir, tmp_path):
    rows = [
        {"user": f"u{i % 40}", "item": i % 50, "age": [1.7 * i, "", str(i)][i % 3],
         "genres": [["drama", "noir"], [], ["unseen"], ["comedy"]][i % 4], "city": ["paris", "oslo", "rome, italy"][i % 3]}
        for i in range(30)
    ]
    jsonl = write_jsonl(tmp_path / "rows.jsonl", rows)
    with open(tmp_path / "rows.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(rows[0])
        # a pre-coded field's id is its token; a bag is its tokens joined by "|"
        w.writerows([r["user"], str(r["item"]), r["age"] if isinstance(r["age"], str) else repr(r["age"]), "|".join(r["genres"]), r["city"]]
                    for r in rows)
    for name, src in (("a", jsonl), ("b", tmp_path / "rows.csv")):
        for ext in ("csv", "jsonl"):
            assert score("--bundle", bundle_dir, "--input", src, "--output", tmp_path / f"{name}.{ext}", "--batch-size", 8) == 0
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    assert read_scores(tmp_path / "a.csv") == read_scores(tmp_path / "a.jsonl")
    assert len(read_scores(tmp_path / "a.csv")) == len(rows)


GOOD = {"user": "u3", "item": 7, "age": 31.0, "genres": ["drama", "noir"], "city": "oslo"}
CSV_HEADER = "user,item,age,genres,city\n"
CSV_GOOD = "u3,7,31.0,drama|noir,oslo\n"


@pytest.mark.parametrize(
    "name, text, problem",
    [
        # a blank line counts: line numbers are the file's; line 5 is in the second chunk of 2
        ("rows.jsonl", "\n".join([json.dumps(GOOD)] * 2 + ["", json.dumps(GOOD), json.dumps({**GOOD, "zip": "75001"})]),
         "line 5: field 'zip': unknown field 'zip'"),
        ("rows.jsonl", "\n".join([json.dumps(GOOD)] * 3 + [json.dumps({**GOOD, "age": "abc"})]),
         "line 4: field 'age': token 'abc' is not a number"),
        ("rows.jsonl", "\n".join([json.dumps(GOOD)] * 3 + ['{"user": "u3", "item": 7, "age": NaN, "genres": [], "city": ""}']),
         "line 4: field 'age': value nan is not finite"),
        ("rows.csv", CSV_HEADER + CSV_GOOD * 3 + "u3,7,abc,drama,oslo\n", "line 5: field 'age': token 'abc' is not a number"),
        ("rows.csv", CSV_HEADER.replace("\n", ",zip\n") + CSV_GOOD.replace("\n", ",75001\n"), "line 2: field 'zip': unknown field 'zip'"),
        ("rows.csv", CSV_HEADER + CSV_GOOD * 2 + "u3,7\n", "line 4: 2 cells for 5 columns"),
    ],
)
def test_bad_row_exits_2_naming_its_line_and_writes_nothing(bundle_dir, tmp_path, capsys, name, text, problem):
    src = tmp_path / "in" / name
    src.parent.mkdir()
    src.write_text(text)
    (tmp_path / "out").mkdir()
    out = tmp_path / "out" / "scores.csv"
    assert score("--bundle", bundle_dir, "--input", src, "--output", out, "--batch-size", 2) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"score: {src}: {problem}"), err
    assert list((tmp_path / "out").iterdir()) == []  # neither the output nor its temporary file


def run_cli(bundle, rows, out) -> subprocess.CompletedProcess:
    """`python -m serving.score` in its own process: real program loading, real stderr."""
    command = [sys.executable, "-m", "serving.score", "--bundle", str(bundle), "--input", rows, "--output", str(out)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_process_prints_only_the_error_line(bundle_dir, tmp_path):
    rows = write_jsonl(tmp_path / "rows.jsonl", [GOOD, {**GOOD, "item": 99}])
    proc = run_cli(bundle_dir, rows, tmp_path / "s.jsonl")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == f"score: {rows}: line 2: field 'item': id 99 out of range [0, 50)\n"
    assert not (tmp_path / "s.jsonl").exists()


def test_missing_bundle_exits_2_with_one_line(tmp_path):
    proc = run_cli(tmp_path / "nope", write_jsonl(tmp_path / "rows.jsonl", [GOOD]), tmp_path / "s.csv")
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and str(tmp_path / "nope") in proc.stderr, proc.stderr
    assert not (tmp_path / "s.csv").exists()


def test_corrupt_bundle_exits_2_with_one_line(bundle_dir, tmp_path, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(bundle_dir, bad)
    (bad / MANIFEST).write_text("{not json")
    rows = write_jsonl(tmp_path / "rows.jsonl", [GOOD])
    assert score("--bundle", bad, "--input", rows, "--output", tmp_path / "s.csv") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and MANIFEST in err, err
    assert not (tmp_path / "s.csv").exists()
