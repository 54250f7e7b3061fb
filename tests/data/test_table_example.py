"""configs/table_example.toml: its CSV is what the generator writes, and the config loads
and builds a dataset with a string label and all three numerical encodings."""

import subprocess
import sys
from pathlib import Path

from trainer.data.config import load_dataset
from trainer.jobs.train import load_experiment

ROOT = Path(__file__).resolve().parents[2]


def test_the_shipped_csv_is_what_the_generator_writes(tmp_path):
    out = tmp_path / "ads.csv"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_table_example.py"), "--out", str(out)], check=True,
                   capture_output=True)  # fmt: skip
    assert out.read_bytes() == (ROOT / "configs" / "data" / "ads_small.csv").read_bytes()


def test_the_example_config_builds_its_dataset(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the config names its CSV relative to the repository root
    exp = load_experiment("configs/table_example.toml", [f"data.cache_dir='{tmp_path}'"])
    ds = load_dataset(exp.data, log=lambda _: None)
    assert ds.n_rows == 3000 and 0.3 < ds.labels.mean() < 0.7
    assert {n: str(ds.spec.field(n).encoding) for n in ds.spec.numerical} == {"visits": "log", "price": "quantile:8", "age": "raw"}
    assert exp.model.reads_dense
