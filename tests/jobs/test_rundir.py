"""OUT as a run directory: no clobbering, resume only with the starting config, one-line user errors."""

import json
import subprocess
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from trainer.jobs.rundir import RECORD, RunDirError, check_data, config_diff, open_run
from trainer.jsonfile import write_json
from trainer.training import TrainConfig

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "tiny" / "deepfm_synthetic.toml"


@dataclass
class Exp:
    train: TrainConfig = field(default_factory=TrainConfig)


def _open(out, exp=None, **kw):
    open_run(out, exp or Exp(), holds=("metrics.json",), env=_env(), log=lambda _: None,
             **{"resume": False, "overwrite": False} | kw)


def _env():
    from trainer.distributed import init_distributed

    return init_distributed()


def test_an_out_holding_a_run_is_refused_unless_overwrite(tmp_path):
    out = tmp_path / "out"
    _open(out)
    (out / "metrics.json").write_text("{}")
    with pytest.raises(RunDirError, match="holds a run.*--resume continues it, --overwrite replaces it"):
        _open(out)
    _open(out, overwrite=True)
    assert not (out / "metrics.json").exists() and (out / RECORD).exists()


def test_resume_refuses_a_changed_config_naming_every_key(tmp_path):
    out = tmp_path / "out"
    _open(out)
    changed = Exp(replace(TrainConfig(), lr=0.5, batch_size=64, epochs=99, log_every=3))
    with pytest.raises(RunDirError) as err:
        _open(out, changed, resume=True)
    assert "train.batch_size" in str(err.value) and "train.lr" in str(err.value)
    assert "train.epochs" not in str(err.value) and "train.log_every" not in str(err.value)  # may change on resume
    _open(out, Exp(replace(TrainConfig(), epochs=99)), resume=True)
    assert json.loads((out / RECORD).read_text())["resumed"] == 1


def test_resume_refuses_changed_data(tmp_path):
    out = tmp_path / "out"
    _open(out)
    check_data(out, "abc", _env())
    check_data(out, "abc", _env())
    with pytest.raises(RunDirError, match="data changed"):
        check_data(out, "xyz", _env())


def test_an_unwritable_out_is_found_before_any_work(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(RunDirError, match="not writable"):
        _open(blocker / "out")


def test_config_diff_flattens_sections():
    assert config_diff({"a": {"b": 1, "c": {"d": 2}}}, {"a": {"b": 1, "c": {"d": 3}}}) == ["a.c.d"]
    assert config_diff({"report": {"export": True}}, {"report": {"export": False}}) == []


def test_a_key_added_since_the_run_started_resumes_at_its_default(tmp_path):
    out = tmp_path / "out"
    _open(out)
    record = json.loads((out / RECORD).read_text())
    del record["config"]["train"]["lr"]  # as if the run had started before train.lr existed
    (out / RECORD).write_text(json.dumps(record))
    _open(out, resume=True)  # the new key at its default: what the old run did
    with pytest.raises(RunDirError, match="train.lr"):
        _open(out, Exp(replace(TrainConfig(), lr=0.5)), resume=True)  # the new key set to something else
    assert config_diff({"a": {}}, {"a": {"b": 1}}, {"a": {"b": 1}}) == []
    assert config_diff({"a": {}}, {"a": {"b": 2}}, {"a": {"b": 1}}) == ["a.b"]


def test_json_files_never_hold_nan(tmp_path):
    write_json(tmp_path / "m.json", {"auc": float("nan"), "x": [float("inf"), 1.0]})
    assert json.loads((tmp_path / "m.json").read_text()) == {"auc": None, "x": [None, 1.0]}


def _cli(tmp_path, *args, config=TINY):
    cmd = [sys.executable, "-m", "trainer", "train", "--config", str(config), "--out", str(tmp_path / "out"),
           f"data.cache_dir={tmp_path / 'cache'}", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("args, message", [
    (["train.lr=inf"], "train.lr: must be finite"),
    (["train.embedding_lr=1e30", "train.lr=1e30", "train.epochs=1"], "training loss is nan"),
    (["train.threads=-1", "train.seed=-3"], "train.threads: must be >= 0"),
    (["train.lr.x=1"], "train.lr is a value, not a table"),
])
def test_user_errors_exit_2_with_one_message_and_no_traceback(tmp_path, args, message):
    res = _cli(tmp_path, *args)
    assert res.returncode == 2, res.stderr[-2000:]
    assert "Traceback" not in res.stderr and message in res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith(("error:", "  - "))


def test_a_data_error_exits_2_naming_the_file_and_line(tmp_path):
    data = tmp_path / "t.tsv"
    data.write_text("1\t5\ta\n0\t3\tb\nmaybe\t1\tc\n")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[data]\nsource = "criteo"\npath = "{data}"\n[model]\nname = "mlp"\nmlp = [4]\n')
    res = _cli(tmp_path, config=cfg)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert str(data) in res.stderr and res.stderr.strip().startswith("error:")


def test_prune_keeps_the_newest_the_best_and_the_current_checkpoint(tmp_path):
    from trainer import checkpoint

    for e in range(6):
        (tmp_path / f"epoch_{e:04d}").mkdir()
        (tmp_path / f"epoch_{e:04d}" / "progress.json").write_text("{}")
    (tmp_path / "LATEST").write_text("epoch_0005")
    checkpoint.prune(tmp_path, keep=2, protect=1)
    assert sorted(p.name for p in tmp_path.glob("epoch_*")) == ["epoch_0001", "epoch_0004", "epoch_0005"]


def test_save_never_deletes_the_checkpoint_latest_names(tmp_path):
    from trainer import checkpoint

    (tmp_path / "epoch_0002").mkdir()
    (tmp_path / "LATEST").write_text("epoch_0002")
    with pytest.raises(RuntimeError, match="current checkpoint"):
        checkpoint.save(tmp_path, 2, None, None, {}, rank=0)
    assert (tmp_path / "epoch_0002").exists()


def test_search_resume_with_a_changed_config_is_refused_before_any_work(tiny_run, search_cmd):
    config, tmp, out, report = tiny_run("ihas_synthetic")
    before = (out / "report.json").read_text()
    cmd = search_cmd(config, out, tmp / "cache")
    cmd = cmd[:-1] + ["--resume", cmd[-1], "search.clusters=3", "train.lr=0.01"]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "Traceback" not in res.stderr and "--resume with a different" in res.stderr
    assert "search.clusters" in res.stderr and "train.lr" in res.stderr
    assert (out / "report.json").read_text() == before  # nothing rewritten


def test_rerunning_into_a_finished_run_is_refused_and_it_stays_resumable(tmp_path):
    assert _cli(tmp_path, "train.epochs=1").returncode == 0
    latest = (tmp_path / "out" / "checkpoints" / "LATEST").read_text()
    res = _cli(tmp_path, "train.epochs=1")
    assert res.returncode == 2 and "holds a run" in res.stderr
    assert (tmp_path / "out" / "checkpoints" / "LATEST").read_text() == latest
    assert (tmp_path / "out" / "checkpoints" / latest / "progress.json").exists()
    assert _cli(tmp_path, "train.epochs=2", "--resume").returncode == 0  # more epochs: a resumable change


def test_an_unwritable_out_exits_2_before_training(tmp_path):
    (tmp_path / "file").write_text("x")
    cmd = [sys.executable, "-m", "trainer", "train", "--config", str(TINY), "--out", str(tmp_path / "file" / "out"),
           f"data.cache_dir={tmp_path / 'cache'}"]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "not writable" in res.stderr and "Traceback" not in res.stderr
    assert "epoch 0" not in res.stdout
