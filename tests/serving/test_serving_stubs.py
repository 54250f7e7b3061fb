"""Committed gRPC stubs match the .proto files, and serving stays free of the trainer."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import serving
from serving import proto_gen


def test_committed_stubs_are_fresh():
    pytest.importorskip("grpc_tools", reason="grpcio-tools (dev extra) regenerates the stubs")
    assert proto_gen.stale_files() == [], "run `python -m serving.proto_gen` and commit serving/_proto/"


def test_stub_imports_resolve_inside_serving():
    from serving._proto.embstack.v1 import inference_pb2, inference_pb2_grpc

    assert inference_pb2.DESCRIPTOR.name == "embstack/v1/inference.proto"  # canonical name for reflection
    assert inference_pb2_grpc.InferenceStub


def test_serving_never_imports_trainer():
    root = Path(serving.__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{path.relative_to(root)}: {n}" for n in names if n == "trainer" or n.startswith("trainer.")]
    assert offenders == []
