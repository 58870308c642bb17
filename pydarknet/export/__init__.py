"""Exporting a network to other runtimes' formats (ONNX, see :mod:`pydarknet.export.onnx`).

from pydarknet.export import to_onnx
to_onnx(net, "yolov4-tiny.onnx", outputs="nms")      # or net.export("yolov4-tiny.onnx", outputs="nms")
"""

from pydarknet.export.onnx import OPSET_MAX, OPSET_MIN, OUTPUTS, to_onnx

__all__ = ["to_onnx", "OPSET_MIN", "OPSET_MAX", "OUTPUTS"]
