"""AutoDim through the recipe on tiny synthetic data: argmax dims retrained, exported, baselines."""

import json
from pathlib import Path

from trainer.decisions import Decisions

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "tiny" / "autodim_synthetic.toml"
CANDIDATES = [2, 4, 8]  # the tiny config's


def test_argmax_dims_are_retrained_exported_and_the_random_baseline_differs(tiny_run):
    _, _, out, report = tiny_run("autodim_synthetic")
    decisions = Decisions.from_json(json.loads((out / "decisions.json").read_text()))
    alpha = decisions.details["alpha"]
    want = {n: CANDIDATES[max(range(len(a)), key=a.__getitem__)] for n, a in alpha.items()}
    assert decisions.clusters[0].dims == want and report["chosen_dims"] == want
    rows = {r["method"]: r for r in report["rows"]}
    assert set(rows) == {"base", "autodim_supernet", "random_dims", "autodim"}
    assert rows["autodim"]["dims"] == [want]
    random = rows["random_dims"]["dims"][0]
    assert random != want and set(random.values()) <= set(CANDIDATES)
    manifest = json.loads((out / "bundle" / "manifest.json").read_text())
    assert manifest["clusters"][0]["dims"] == want
    # the bundle's tables: one per field at its searched dim (FBGEMM-aligned), nothing else searched
    tables = {t["name"]: t["dim"] for t in manifest["clusters"][0]["tables"] if t["name"].startswith("t_")}
    assert tables == {f"t_{n}": -(-d // 4) * 4 for n, d in want.items()}


def test_ihas_2_baseline_runs_an_ihas_search(tmp_path):
    from trainer.jobs.search import load_experiment, run

    overrides = ["variants.ihas_2=true", "variants.random=false", "report.export=false", "report.plots=false",
                 "variants.ihas={pretrain_epochs=1, search_epochs=1, arch_every=5}", f"data.cache_dir={tmp_path / 'cache'}"]
    report = run(load_experiment(str(CONFIG), overrides), tmp_path / "run", log=lambda _: None)
    rows = {r["method"]: r for r in report["rows"]}
    assert set(rows) == {"base", "autodim_supernet", "ihas_2", "autodim"}
    ihas = rows["ihas_2"]
    assert ihas["clusters"] == 1 and all(0 <= d <= 8 for d in ihas["dims"][0].values())  # kept columns of dim-8 fields


def test_aim_eds_baseline_retrains_the_dims_aim_keeps(tmp_path):
    from trainer.jobs.search import load_experiment, run

    aim = '{search_epochs=1, max_order=2, functions=["inner"], function_wise=false, grda_c=0.3, eds_c=0.01, arch_lr=0.05}'
    overrides = ["variants.aim_eds=true", "variants.random=false", "report.export=false", "report.plots=false",
                 f"variants.aim={aim}", f"data.cache_dir={tmp_path / 'cache'}"]
    report = run(load_experiment(str(CONFIG), overrides), tmp_path / "run", log=lambda _: None)
    rows = {r["method"]: r for r in report["rows"]}
    assert set(rows) == {"base", "autodim_supernet", "aim_eds", "autodim"}
    eds = rows["aim_eds"]["dims"][0]
    assert any(d > 0 for d in eds.values()) and all(0 <= d <= 8 for d in eds.values())  # kept dims of dim-8 fields


def test_unknown_aim_keys_are_refused(tmp_path):
    import subprocess
    import sys

    cfg = tmp_path / "bad.toml"
    cfg.write_text(CONFIG.read_text().replace("[variants]", "[variants]\naim_eds = true\naim = {warm = true}"))
    res = subprocess.run([sys.executable, "-m", "trainer", "search", "--config", str(cfg), "--out", str(tmp_path / "o")],
                         capture_output=True, text=True)
    assert res.returncode == 2 and "variants.aim: unknown AIM keys ['warm']" in res.stderr and "Traceback" not in res.stderr


def test_bn_rows_search_again_with_their_own_bn_and_labels_say_which_is_the_papers(tmp_path, monkeypatch):
    from trainer.jobs.search import load_experiment, run
    from trainer.search.autodim import supernet

    built = []
    init = supernet.DimSearchEmbeddings.__init__

    def spy(self, *args, **kwargs):
        init(self, *args, **kwargs)
        bn = self.bns[self.fields[0]][0]
        built.append((self.bn_scale, bn.affine))

    monkeypatch.setattr(supernet.DimSearchEmbeddings, "__init__", spy)
    overrides = ["search.bn_scale=0.1", "variants.paper_bn=true", "variants.learned_bn=true", "variants.random=false",
                 "report.export=false", "report.plots=false", f"data.cache_dir={tmp_path / 'cache'}"]
    report = run(load_experiment(str(CONFIG), overrides), tmp_path / "run", log=lambda _: None)
    rows = {r["method"]: r for r in report["rows"]}
    assert set(rows) == {"base", "autodim_supernet", "autodim_paper_bn", "autodim_learned_bn", "autodim"}
    # the method's supernet, then each row's own search
    assert built == [(0.1, False), (1.0, False), (1.0, True)]
    assert rows["autodim"]["label"] == "AutoDim (BN × 0.1, not the paper's)"
    assert rows["autodim_paper_bn"]["label"] == "AutoDim (the paper's BN)"
    assert rows["autodim_learned_bn"]["label"] == "AutoDim (BN with learned γ, β, not the paper's)"
    for row in ("autodim_paper_bn", "autodim_learned_bn"):
        assert set(rows[row]["dims"][0].values()) <= set(CANDIDATES)
