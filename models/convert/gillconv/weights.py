"""Checkpoint reading, tensor by tensor, and strict binding into the converter's modules.

Hugging Face / diffusers folders hold safetensors (one file or shards with an index) or `.bin` pickles;
GILL's release holds `.pth.tar` pickles saved on cuda:0. Safetensors files are memory-mapped and every
tensor is a view on the mapping, so a 13 GB LM costs page cache, not process memory. Pickles are loaded
with torch.load(mmap=True) on torch >= 2.1; torch 1.13 has no mmap and reads each file whole.
"""

from __future__ import annotations

import json
import mmap
import re
import struct
import warnings
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import nn

SAFETENSORS_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "I64": torch.int64,
                      "F64": torch.float64, "I32": torch.int32, "U8": torch.uint8, "BOOL": torch.bool}


class ConversionError(Exception):
    """A problem with the inputs, worded for the person running the converter."""


class Source:
    """Named tensors from one checkpoint; remembers which were consumed so leftovers can be reported."""

    def __init__(self, label: str, tensors: dict[str, Callable[[], torch.Tensor]], shapes: dict[str, tuple]):
        self.label, self._tensors, self.shapes = label, tensors, shapes
        self.consumed: set[str] = set()

    def get(self, key: str) -> torch.Tensor:
        self.consumed.add(key)
        return self._tensors[key]()

    def ignore(self, pattern: str) -> None:
        """Marks keys the bundle does not need (e.g. CLIP's projections) as knowingly left out."""
        self.consumed.update(k for k in self.shapes if re.fullmatch(pattern, k))

    def check_all_used(self) -> None:
        left = sorted(set(self.shapes) - self.consumed)
        if left:
            raise ConversionError(f"{self.label}: unexpected keys (not part of the architecture): {_listing(left)}")


def _listing(keys: Iterable[str], limit: int = 20) -> str:
    keys = list(keys)
    more = f" … and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def _safetensors(path: Path) -> tuple[dict, dict]:
    """Zero-copy views on a memory-mapped safetensors file (header: 8-byte length, then JSON)."""
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    (n,) = struct.unpack("<Q", mm[:8])
    header = json.loads(mm[8:8 + n])
    header.pop("__metadata__", None)
    base = 8 + n
    tensors, shapes = {}, {}
    for key, info in header.items():
        if info["dtype"] not in SAFETENSORS_DTYPES:
            raise ConversionError(f"{path}: tensor {key} has unsupported dtype {info['dtype']}")
        dtype, shape = SAFETENSORS_DTYPES[info["dtype"]], tuple(info["shape"])
        start, end = info["data_offsets"]

        def load(start=start, end=end, dtype=dtype, shape=shape):
            count = (end - start) // torch.empty((), dtype=dtype).element_size()
            if count == 0:
                return torch.empty(shape, dtype=dtype)
            with warnings.catch_warnings():  # the mapping is read-only, and nothing writes to it
                warnings.simplefilter("ignore")
                return torch.frombuffer(mm, dtype=dtype, count=count, offset=base + start).reshape(shape)

        tensors[key], shapes[key] = load, shape
    return tensors, shapes


def torch_load(path: Path):
    """torch.load on CPU, memory-mapped where torch supports it (>= 2.1), weights only where supported."""
    kwargs = {"map_location": "cpu"}
    try:
        return torch.load(path, mmap=True, weights_only=True, **kwargs)
    except TypeError:  # torch < 2.1: no mmap
        pass
    except RuntimeError as e:  # old (non-zip) pickles cannot be memory-mapped
        if "mmap" not in str(e):
            raise ConversionError(f"{path}: cannot be read: {e}") from e
    try:
        return torch.load(path, weights_only=True, **kwargs)
    except TypeError:
        return torch.load(path, **kwargs)


def _from_state_dict(sd: dict) -> tuple[dict, dict]:
    tensors = {k: (lambda v=v: v) for k, v in sd.items() if isinstance(v, torch.Tensor)}
    return tensors, {k: tuple(v.shape) for k, v in sd.items() if isinstance(v, torch.Tensor)}


def read_folder(folder: Path, label: str, stem: str) -> Source:
    """A Hugging Face (`stem` = model) or diffusers (`stem` = diffusion_pytorch_model) weights folder."""
    folder = Path(folder)
    single, index = folder / f"{stem}.safetensors", folder / f"{stem}.safetensors.index.json"
    bin_single, bin_index = folder / ("pytorch_model.bin" if stem == "model" else f"{stem}.bin"), \
        folder / ("pytorch_model.bin.index.json" if stem == "model" else f"{stem}.bin.index.json")
    files: list[Path]
    if single.exists():
        files = [single]
    elif index.exists():
        files = sorted({folder / f for f in json.loads(index.read_text())["weight_map"].values()})
    elif bin_single.exists():
        files = [bin_single]
    elif bin_index.exists():
        files = sorted({folder / f for f in json.loads(bin_index.read_text())["weight_map"].values()})
    else:
        raise ConversionError(f"{label}: no weights in {folder} (looked for {single.name}, {index.name}, "
                              f"{bin_single.name}, {bin_index.name})")
    tensors, shapes = {}, {}
    for f in files:
        if not f.exists():
            raise ConversionError(f"{label}: the index names {f.name}, which is not in {folder}")
        t, s = _safetensors(f) if f.suffix == ".safetensors" else _from_state_dict(torch_load(f))
        tensors.update(t)
        shapes.update(s)
    return Source(label, tensors, shapes)


def read_pth(path: Path, label: str) -> Source:
    """A `.pth.tar` state dict, possibly wrapped in {'state_dict': …}, keys with `module.`/`model.` removed."""
    path = Path(path)
    if not path.exists():
        raise ConversionError(f"{label}: {path} does not exist")
    obj = torch_load(path)
    sd = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(sd, dict):
        raise ConversionError(f"{label}: {path} holds {type(obj).__name__}, not a state dict")
    sd = {re.sub(r"^(module\.)?(model\.)?", "", k): v for k, v in sd.items()}
    tensors, shapes = _from_state_dict(sd)
    return Source(label, tensors, shapes)


def bind(module: nn.Module, source: Source, prefix: str = "", dtype: torch.dtype | None = None,
         rename: Callable[[str], str] = lambda k: k) -> None:
    """Loads every parameter of `module` from `source[prefix + rename(name)]`, strictly: every missing or
    mis-shaped key is an error naming it. Parameters are replaced (not copied into), so views on a
    memory-mapped file stay views when no dtype conversion is needed."""
    problems = []
    wanted = dict(module.named_parameters())
    for name, p in wanted.items():
        key = prefix + rename(name)
        if key not in source.shapes:
            problems.append(f"missing {key} {list(p.shape)}")
        elif tuple(source.shapes[key]) != tuple(p.shape):
            problems.append(f"{key} has shape {list(source.shapes[key])}, expected {list(p.shape)}")
    if problems:
        raise ConversionError(f"{source.label}: {_listing(problems)}")
    for name, p in wanted.items():
        t = source.get(prefix + rename(name))
        if t.dtype.is_floating_point and dtype is not None and t.dtype != dtype:
            t = t.to(dtype)
        owner_path, _, leaf = name.rpartition(".")
        owner = module.get_submodule(owner_path) if owner_path else module
        setattr(owner, leaf, nn.Parameter(t, requires_grad=False))


def expect(source: Source, key: str, shape: tuple) -> torch.Tensor:
    """One tensor outside any module (e.g. GILL's [IMG] embedding rows), checked like `bind` does."""
    if key not in source.shapes:
        raise ConversionError(f"{source.label}: missing {key} {list(shape)}")
    if tuple(source.shapes[key]) != tuple(shape):
        raise ConversionError(f"{source.label}: {key} has shape {list(source.shapes[key])}, expected {list(shape)}")
    return source.get(key)
