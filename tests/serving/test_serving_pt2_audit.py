"""The .pt2 audit admits exported CTR programs and refuses archives that could run code;
the loader loads exactly the bytes it audited."""

from __future__ import annotations

import io
import json
import shutil
import zipfile

import pytest
import torch

import serving.bundle.verify as verify_mod
from serving.bundle import BundleError, load_bundle
from serving.pt2_audit import UnsafeProgram, audit_pt2


def test_real_programs_pass(bundle_dir):
    for name in ("router.pt2", "cluster_0.pt2", "cluster_1.pt2"):
        audit_pt2(bundle_dir / name)


def archive(tmp_path, model: dict, extra: dict[str, bytes] | None = None):
    path = tmp_path / "m.pt2"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("m/models/model.json", json.dumps(model))
        z.writestr("m/data/sample_inputs/model.pt", b"")
        for name, data in (extra or {}).items():
            z.writestr(name, data)
    return path


def node(target: str) -> dict:
    return {"graph_module": {"graph": {"nodes": [{"target": target, "inputs": []}]}}}


@pytest.mark.parametrize(
    "target", ["torch.ops.aten.embedding_bag.padding_idx", "torch.ops.fbgemm.asynchronous_complete_cumsum.default",
               "_operator.getitem", "_operator.floordiv", "math.floor", "torch.sym_max"],
)
def test_allowed_targets(tmp_path, target):
    audit_pt2(archive(tmp_path, node(target)))


@pytest.mark.parametrize(
    "target", ["torch.os.system", "torch.load", "builtins.eval", "_operator.methodcaller", "_operator.attrgetter",
               "torch.ops.myns.anything.default", "#custom_op", "math.__dict__"],
)
def test_refused_targets(tmp_path, target):
    with pytest.raises(UnsafeProgram, match="not an allowed operator"):
        audit_pt2(archive(tmp_path, node(target)))


GOOD_GUARDS = [
    "L['sparse']._lengths.size()[0] == (5*(L['sparse']._lengths.size()[0] // 5))",
    "max(1, L['dense'].size()[0]) < 10",
    "math.isnan(L['x'].size()[0]) or L['x'].size()[0] >= 2",
]
BAD_GUARDS = [
    "__import__('os').system('id')",
    "L['x'].numpy().tofile('f')",  # a call that is not a size query
    "getattr(L['x'], 'a')",
    "L['x'].__class__",
    "torch.load('f')",
    "L['a\"); import os; (\"'].size()[0]",  # breaking out of the string torch builds
    "open('f')",
]


@pytest.mark.parametrize("guard", GOOD_GUARDS)
def test_allowed_guards(tmp_path, guard):
    audit_pt2(archive(tmp_path, {"guards_code": [guard]}))


@pytest.mark.parametrize("guard", BAD_GUARDS)
def test_refused_guards(tmp_path, guard):
    with pytest.raises(UnsafeProgram):
        audit_pt2(archive(tmp_path, {"guards_code": [guard]}))


@pytest.mark.parametrize(
    "expr,ok",
    [
        ("Equality(Add(Symbol('u0', integer=True), Symbol('u1', integer=True)), Symbol('s74', positive=True, integer=True))", True),
        ("FloorDiv(Symbol('s1', integer=True), Integer(5))", True),
        ("Symbol(__import__('os').system('id') or 's1')", False),
        ("Symbol('s1').__class__", False),
        ("Symbol('x\\'); import os; (\\'')", False),
        ("eval('1')", False),
    ],
)
def test_sympy_expressions(tmp_path, expr, ok):
    model = {"graph_module": {"graph": {"sym_int_values": {"s": {"as_expr": {"expr_str": expr}}}}}}
    if ok:
        audit_pt2(archive(tmp_path, model))
    else:
        with pytest.raises(UnsafeProgram):
            audit_pt2(archive(tmp_path, model))


def test_pickles_refused(tmp_path):
    with pytest.raises(UnsafeProgram, match="pickled payload"):
        audit_pt2(archive(tmp_path, {}, {"m/data/weights/m.pt": b"\x80\x04..."}))
    config = {"config": {"w": {"path_name": "weight_0", "use_pickle": True}}}
    with pytest.raises(UnsafeProgram, match="pickled weight"):
        audit_pt2(archive(tmp_path, {}, {"m/data/weights/model_weights_config.json": json.dumps(config).encode()}))


PROGRAMS = ("router.pt2", "cluster_0.pt2", "cluster_1.pt2")


def test_the_load_uses_the_audited_bytes(tmp_path, bundle_dir, monkeypatch):
    """Each program file is read once: the audit and torch.export.load see the same bytes,
    so a file swapped on disk right after its audit is never what loads."""
    copy = tmp_path / "b"
    shutil.copytree(bundle_dir, copy)
    originals = {(bundle_dir / n).read_bytes(): n for n in PROGRAMS}
    hostile = archive(tmp_path, node("torch.os.system")).read_bytes()
    audited, loaded = [], []
    real_audit, real_load = verify_mod.audit_pt2, torch.export.load

    def audit_then_swap(data):
        real_audit(data)
        audited.append(data)
        (copy / originals[data]).write_bytes(hostile)  # an attacker racing the loader

    def load(f, *args, **kwargs):
        assert isinstance(f, io.BytesIO)
        loaded.append(f.getvalue())
        return real_load(f, *args, **kwargs)

    monkeypatch.setattr(verify_mod, "audit_pt2", audit_then_swap)
    monkeypatch.setattr(torch.export, "load", load)
    bundle = load_bundle(copy)  # golden outputs reproduced: the original programs loaded
    assert bundle.num_clusters == 2
    assert sorted(map(originals.get, audited)) == sorted(PROGRAMS) and loaded == audited
    assert all((copy / n).read_bytes() == hostile for n in PROGRAMS)


def test_a_file_swapped_after_the_hash_check_is_refused(tmp_path, bundle_dir, monkeypatch):
    copy = tmp_path / "b"
    shutil.copytree(bundle_dir, copy)
    real_verify = verify_mod.verify_files

    def verify_then_swap(root, manifest):
        real_verify(root, manifest)
        (copy / "cluster_1.pt2").write_bytes((copy / "cluster_0.pt2").read_bytes())

    monkeypatch.setattr(verify_mod, "verify_files", verify_then_swap)
    with pytest.raises(BundleError, match=r"cluster_1\.pt2: changed since its sha256 was checked"):
        load_bundle(copy)
