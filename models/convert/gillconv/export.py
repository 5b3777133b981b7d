"""ONNX export of the converter's modules, with each graph's weights in one external data file.

torch.onnx.export (the TorchScript exporter, the same on torch 1.13 and 2.x) writes the graph; a model over
protobuf's 2 GB limit comes out with one file per tensor. `externalize` then streams every initializer,
inline or in those files, into `<graph>.onnx.data` one tensor at a time, so no step holds a second copy of
the weights.
"""

from __future__ import annotations

import hashlib
import inspect
import os
from pathlib import Path

import torch
from torch import nn

OPSET = 17  # LayerNormalization as one op


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


def export(module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str],
           axes: dict[str, dict[int, str]], external: bool) -> None:
    kwargs = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(module.eval(), args, str(path), input_names=inputs, output_names=outputs,
                          dynamic_axes=axes, opset_version=OPSET, do_constant_folding=True, **kwargs)
    if external:
        externalize(path)


def externalize(path: Path) -> None:
    """Moves every initializer of `path` into `<name>.data` beside it (ONNX external data)."""
    import onnx
    from onnx.external_data_helper import uses_external_data

    folder = path.parent
    model = onnx.load(str(path), load_external_data=False)
    data_name = path.name + ".data"
    leftovers = []
    with open(folder / data_name, "wb") as out:
        for t in model.graph.initializer:
            if uses_external_data(t):
                info = {e.key: e.value for e in t.external_data}
                src = folder / info["location"]
                offset, length = int(info.get("offset", 0)), info.get("length")
                with open(src, "rb") as f:
                    f.seek(offset)
                    raw = f.read(int(length)) if length is not None else f.read()
                leftovers.append(src)
            else:
                raw = t.raw_data if t.HasField("raw_data") else onnx.numpy_helper.to_array(t).tobytes()
            pad = (-out.tell()) % 64  # aligned, so ONNX Runtime can map tensors in place
            out.write(b"\0" * pad)
            start = out.tell()
            out.write(raw)
            for field in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
                t.ClearField(field)
            del t.external_data[:]
            t.data_location = onnx.TensorProto.EXTERNAL
            for k, v in (("location", data_name), ("offset", str(start)), ("length", str(len(raw)))):
                e = t.external_data.add()
                e.key, e.value = k, v
    onnx.save_model(model, str(path))
    for src in set(leftovers):
        if src.name != data_name:
            os.remove(src)


def graph_record(path: Path, dtype: str) -> dict:
    """The manifest's `graphs` entry of one graph file."""
    data = path.parent / (path.name + ".data")
    external = [{"file": data.name, "bytes": data.stat().st_size, "sha256": sha256(data)}] if data.exists() else []
    return {"dtype": dtype, "bytes": path.stat().st_size, "sha256": sha256(path), "externalData": external}
