"""Shared pytest fixtures (keep this file small and generic)."""

import pytest

import nets


@pytest.fixture(scope="session")
def torch_net_onnx(tmp_path_factory):
    """``get(name, dynamo=False, keep_batchnorm=False) -> Path`` of a network from ``tests/nets.py``
    exported to ONNX; each variant is exported once per test session and cached under a temporary
    directory.

        def test_compile_resnet(torch_net_onnx):
            graph = qc.from_onnx(torch_net_onnx("resnet18"))
    """
    root = tmp_path_factory.mktemp("torch_nets")
    cache = {}

    def get(name: str, dynamo: bool = False, keep_batchnorm: bool = False):
        key = (name, dynamo, keep_batchnorm)
        if key not in cache:
            cache[key] = nets.export_onnx(name, root, dynamo=dynamo, keep_batchnorm=keep_batchnorm)
        return cache[key]

    return get
