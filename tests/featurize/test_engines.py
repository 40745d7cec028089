"""The onnxruntime engine: same vectors as torch, its own fingerprint, a cached export, a fallback."""

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from featurize import BACKBONES, Backbone, CnnfeatError, Preprocessing, extract, load_features
from featurize.engines import ExportFailed, compute_precision, exporter_key, resolve_engine

RANDOM = {"backbone": "resnet18", "weights": "random", "progress": False, "workers": 0}


def _cosines(a, b):
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_onnxruntime_gives_torch_vectors_under_its_own_fingerprint(class_folders, tmp_path, graph_cache):
    by_torch = load_features(extract(data=class_folders, out=tmp_path / "t", engine="torch", **RANDOM).store)
    result = extract(data=class_folders, out=tmp_path / "o", engine="onnxruntime", **RANDOM)
    by_ort = load_features(result.store)
    assert list(by_ort.paths) == list(by_torch.paths)
    assert _cosines(by_ort.X, by_torch.X).min() >= 0.9999
    assert by_ort.config["engine"] == "onnxruntime" and by_torch.config["engine"] == "torch"
    assert by_ort.fingerprint != by_torch.fingerprint
    graph = f"resnet18-{by_ort.fingerprint}-{exporter_key()}.onnx"
    assert sorted(p.name for p in graph_cache.iterdir()) == [graph, f"{graph}.sha256"]


def test_the_exported_graph_is_reused_and_a_damaged_one_replaced(class_folders, tmp_path, monkeypatch, graph_cache):
    from featurize import engines
    from tests.conftest import write_image

    first = extract(data=class_folders, out=tmp_path, engine="onnxruntime", **RANDOM)
    graph = next(graph_cache.glob("*.onnx"))
    real_export = engines.export_backbone

    def no_export(model):
        raise AssertionError("exported again although the graph is cached")

    monkeypatch.setattr(engines, "export_backbone", no_export)
    write_image(class_folders / "cats" / "new.png", seed=77)
    second = extract(data=class_folders, out=tmp_path, engine="onnxruntime", **RANDOM)
    assert (second.extracted, second.reused) == (1, 7)

    graph.write_bytes(b"not an onnx graph")  # a damaged cache file
    monkeypatch.setattr(engines, "export_backbone", real_export)
    write_image(class_folders / "cats" / "newer.png", seed=78)
    third = extract(data=class_folders, out=tmp_path, engine="onnxruntime", **RANDOM)
    assert third.extracted == 1 and graph.read_bytes()[:20] != b"not an onnx graph"
    reference = load_features(first.store)
    again = load_features(third.store)
    same = [list(again.paths).index(p) for p in reference.paths]
    np.testing.assert_allclose(again.X[same], reference.X, rtol=1e-6, atol=1e-6)


@dataclass(frozen=True)
class SingularValues(Backbone):
    """A backbone whose last step (singular values) has no ONNX operator: export must fail."""

    source = "test"

    def preprocessing(self):
        return Preprocessing(40, 32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "bilinear")

    def pretrained_id(self):
        return "none"

    def pretrained_location(self):
        return "nowhere", True

    def build_trunk(self, pretrained):
        class Trunk(torch.nn.Module):
            def forward(self, images):
                return torch.linalg.svdvals(images.mean(1))  # (N, 32)

        return Trunk()


def test_a_backbone_that_does_not_export_runs_on_torch_with_a_note(class_folders, tmp_path, monkeypatch, graph_cache):
    monkeypatch.setitem(BACKBONES, "svd_test", SingularValues("svd_test", 32))
    result = extract(data=class_folders, backbone="svd_test", out=tmp_path, progress=False, workers=0)
    assert "does not export to ONNX" in result.notes[0] and "svdvals" in result.notes[0]
    features = load_features(result.store)
    assert features.config["engine"] == "torch" and features.X.shape == (7, 32)
    assert np.linalg.norm(features.X, axis=1).min() > 0  # real vectors, not zeros
    assert not graph_cache.exists() or not any(graph_cache.iterdir())


def test_engine_choice():
    assert resolve_engine("auto", "cpu") == "onnxruntime" and resolve_engine("auto", "cuda") == "torch"
    assert resolve_engine("torch", "cpu") == "torch"
    with pytest.raises(CnnfeatError, match="runs on the CPU here"):
        resolve_engine("onnxruntime", "cuda:0")
    with pytest.raises(CnnfeatError, match="unknown"):
        resolve_engine("tensorrt", "cpu")
    assert compute_precision("cuda", "torch") == "float16" and compute_precision("cpu", "onnxruntime") == "float32"
    assert issubclass(ExportFailed, CnnfeatError)
