"""Models as graphs that run without PyTorch: ONNX and OpenVINO exports, and the graphs behind them."""

from engine.export.graphs import BATCH, ExportError, Graph, GraphSet, TensorSpec, graph_set

__all__ = ["BATCH", "ExportError", "Graph", "GraphSet", "TensorSpec", "graph_set"]
