"""Models as graphs that run without PyTorch: ONNX and OpenVINO exports, and the graphs behind them."""

from worker.export import fomm, tpsmm  # noqa: F401  (register the FOMM and TPSMM families)
from worker.export.graphs import BATCH, ExportError, Graph, GraphSet, TensorSpec, graph_set, register_family

__all__ = ["BATCH", "ExportError", "Graph", "GraphSet", "TensorSpec", "graph_set", "register_family"]
