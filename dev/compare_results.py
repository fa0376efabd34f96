#!/usr/bin/env python
"""Compare two ``results/`` trees and report every difference.

    python dev/compare_results.py results_before/ results_after/ [--rtol 1e-9] [--ignore GLOB]

* JSON: every number to ``--rtol`` relative (``--atol`` absolute for values near 0), strings,
  booleans and structure exactly; provenance and timing fields are ignored.
* HDF5 (``.h5``): every dataset (numbers to ``--rtol``, others exactly) and the attributes
  (provenance ignored).
* Parquet: every column, and the key-value metadata with provenance ignored.
* ONNX: the outputs of both models on the same fixed inputs (seeded normal values, 257 rows), to
  ``--onnx-atol``.
* ROOT (uproot): every TTree/RNTuple branch and histogram.
* PyTorch checkpoints (``.pt``): every tensor of the state (``weights_only`` loading).
* CSV / Markdown / text: line by line, numeric tokens to ``--rtol``.
* Images (``.png``, ``.svg``, ``.pdf``): presence only (renderers differ between machines).

Exit status 0 when the trees agree, 1 otherwise; every difference is printed, one per line.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

IGNORED_KEYS = re.compile(
    r"^(provenance|timings?|.*_seconds|seconds|elapsed.*|wall_?time.*|duration.*|created|"
    r"date|hostname|host|commit|git_commit|python|platform|versions|dependencies|runtime.*|"
    r"events_per_second|.*_per_s|.*_per_second|throughput.*|timings?_s)$"
)
PRESENCE_ONLY = {".png", ".svg", ".pdf", ".jpg", ".html"}
NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


class Comparer:
    def __init__(self, rtol: float, atol: float, onnx_atol: float) -> None:
        self.rtol, self.atol, self.onnx_atol = rtol, atol, onnx_atol
        self.diffs: list[str] = []

    def diff(self, where: str, what: str) -> None:
        self.diffs.append(f"{where}: {what}")

    # ------------------------------------------------------------------ values
    def close(self, a: float, b: float) -> bool:
        if math.isnan(a) and math.isnan(b):
            return True
        if math.isinf(a) or math.isinf(b):
            return a == b
        return abs(a - b) <= max(self.atol, self.rtol * max(abs(a), abs(b)))

    def value(self, where: str, a: Any, b: Any) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            keys = [k for k in sorted(set(a) | set(b)) if not IGNORED_KEYS.match(str(k))]
            for k in keys:
                if k not in a or k not in b:
                    self.diff(f"{where}.{k}", "only in " + ("after" if k not in a else "before"))
                else:
                    self.value(f"{where}.{k}", a[k], b[k])
        elif isinstance(a, list) and isinstance(b, list):
            if len(a) != len(b):
                self.diff(where, f"length {len(a)} != {len(b)}")
            for i, (x, y) in enumerate(zip(a, b, strict=False)):
                self.value(f"{where}[{i}]", x, y)
        elif (
            isinstance(a, int | float)
            and isinstance(b, int | float)
            and not isinstance(a, bool)
            and not isinstance(b, bool)
        ):
            if not self.close(float(a), float(b)):
                self.diff(where, f"{a!r} != {b!r} (rel {_rel(a, b):.3g})")
        elif a != b:
            self.diff(where, f"{_short(a)} != {_short(b)}")

    def array(self, where: str, a: np.ndarray, b: np.ndarray, atol: float | None = None) -> None:
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape:
            self.diff(where, f"shape {a.shape} != {b.shape}")
            return
        if a.dtype.kind in "fciu" and b.dtype.kind in "fciu":
            fa, fb = a.astype(np.float64), b.astype(np.float64)
            tol = np.maximum(
                atol if atol is not None else self.atol,
                self.rtol * np.maximum(np.abs(fa), np.abs(fb)),
            )
            bad = ~((np.abs(fa - fb) <= tol) | (np.isnan(fa) & np.isnan(fb)) | (fa == fb))
            if bad.any():
                i = int(np.flatnonzero(bad.ravel())[0])
                self.diff(
                    where,
                    f"{int(bad.sum())} of {bad.size} values differ (first at {i}: "
                    f"{fa.ravel()[i]!r} != {fb.ravel()[i]!r})",
                )
        elif not np.array_equal(a, b):
            self.diff(where, f"{int(np.sum(a != b))} of {a.size} values differ")

    # ------------------------------------------------------------------ files
    def json_file(self, where: str, a: Path, b: Path) -> None:
        self.value(where, json.loads(a.read_text()), json.loads(b.read_text()))

    def text_file(self, where: str, a: Path, b: Path) -> None:
        la, lb = a.read_text().splitlines(), b.read_text().splitlines()
        if len(la) != len(lb):
            self.diff(where, f"{len(la)} != {len(lb)} lines")
        for i, (x, y) in enumerate(zip(la, lb, strict=False)):
            if NUMBER.sub("#", x) != NUMBER.sub("#", y):
                self.diff(f"{where}:{i + 1}", f"{x[:80]!r} != {y[:80]!r}")
                continue
            for u, v in zip(NUMBER.findall(x), NUMBER.findall(y), strict=True):
                if not self.close(float(u), float(v)):
                    self.diff(f"{where}:{i + 1}", f"{u} != {v}")

    def h5_file(self, where: str, a: Path, b: Path) -> None:
        import h5py

        with h5py.File(a) as fa, h5py.File(b) as fb:
            names_a, names_b = _h5_items(fa), _h5_items(fb)
            for name in sorted(set(names_a) | set(names_b)):
                if name not in names_a or name not in names_b:
                    self.diff(
                        f"{where}:{name}",
                        "only in " + ("after" if name not in names_a else "before"),
                    )
                    continue
                oa, ob = fa[name], fb[name]
                if isinstance(oa, h5py.Dataset):
                    if h5py.check_dtype(ref=oa.dtype) is not None:
                        continue  # object references: the referenced objects are compared
                    self.array(f"{where}:{name}", oa[()], ob[()])
                self.value(f"{where}:{name}@attrs", _attrs(oa.attrs), _attrs(ob.attrs))

    def parquet_file(self, where: str, a: Path, b: Path) -> None:
        import pyarrow.parquet as pq

        ta, tb = pq.read_table(a), pq.read_table(b)
        if ta.column_names != tb.column_names:
            self.diff(where, f"columns {ta.column_names} != {tb.column_names}")
        for name in set(ta.column_names) & set(tb.column_names):
            self.array(
                f"{where}:{name}",
                ta[name].to_numpy(zero_copy_only=False),
                tb[name].to_numpy(zero_copy_only=False),
            )
        self.value(f"{where}@metadata", _parquet_meta(ta), _parquet_meta(tb))

    def onnx_file(self, where: str, a: Path, b: Path) -> None:
        import onnxruntime as ort

        sa = ort.InferenceSession(str(a), providers=["CPUExecutionProvider"])
        sb = ort.InferenceSession(str(b), providers=["CPUExecutionProvider"])
        feeds = {}
        rng = np.random.default_rng(20261201)
        for inp in sa.get_inputs():
            shape = [257 if not isinstance(d, int) else d for d in inp.shape]
            feeds[inp.name] = rng.normal(size=shape).astype(np.float32)
        names_b = [i.name for i in sb.get_inputs()]
        if sorted(feeds) != sorted(names_b):
            self.diff(where, f"inputs {sorted(feeds)} != {sorted(names_b)}")
            return
        for i, (x, y) in enumerate(zip(sa.run(None, feeds), sb.run(None, feeds), strict=True)):
            self.array(f"{where}:output{i}", x, y, atol=self.onnx_atol)

    def torch_file(self, where: str, a: Path, b: Path) -> None:
        import torch

        self.value(
            where,
            _tensors(torch.load(a, weights_only=True)),
            _tensors(torch.load(b, weights_only=True)),
        )

    def root_file(self, where: str, a: Path, b: Path) -> None:
        import uproot

        with uproot.open(a) as fa, uproot.open(b) as fb:
            ka = set(fa.keys(cycle=False, recursive=True))
            kb = set(fb.keys(cycle=False, recursive=True))
            if ka != kb:
                self.diff(where, f"keys {sorted(ka ^ kb)} in one file only")
            for key in sorted(ka & kb):
                oa, ob = fa[key], fb[key]
                if isinstance(oa, uproot.ReadOnlyDirectory):
                    continue
                if hasattr(oa, "arrays"):
                    xa, xb = oa.arrays(library="np"), ob.arrays(library="np")
                    for name in sorted(set(xa) | set(xb)):
                        if name in xa and name in xb and xa[name].dtype != object:
                            self.array(f"{where}:{key}/{name}", xa[name], xb[name])
                        elif name in xa and name in xb:
                            self.array(
                                f"{where}:{key}/{name}",
                                np.concatenate(xa[name]),
                                np.concatenate(xb[name]),
                            )
                        else:
                            self.diff(f"{where}:{key}/{name}", "in one file only")
                elif hasattr(oa, "values"):
                    self.array(f"{where}:{key}", oa.values(flow=True), ob.values(flow=True))
                    if hasattr(oa, "variances"):
                        self.array(
                            f"{where}:{key}@variances",
                            oa.variances(flow=True),
                            ob.variances(flow=True),
                        )

    def file(self, rel: str, a: Path, b: Path) -> None:
        suffix = a.suffix.lower()
        handlers = {
            ".json": self.json_file,
            ".h5": self.h5_file,
            ".hdf5": self.h5_file,
            ".parquet": self.parquet_file,
            ".onnx": self.onnx_file,
            ".pt": self.torch_file,
            ".root": self.root_file,
        }
        try:
            if suffix in PRESENCE_ONLY:
                return
            if suffix in handlers:
                handlers[suffix](rel, a, b)
            elif suffix in {".csv", ".md", ".txt", ".tsv", ".yaml", ".yml", ".dat", ".card"}:
                self.text_file(rel, a, b)
            elif a.read_bytes() != b.read_bytes():
                self.diff(rel, "bytes differ")
        except Exception as exc:  # a file that cannot be read is a difference, not a crash
            self.diff(rel, f"could not compare: {type(exc).__name__}: {exc}")


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), abs(b), 1e-300)


def _short(x: Any) -> str:
    s = repr(x)
    return s if len(s) < 60 else s[:57] + "..."


def _h5_items(f: Any) -> list[str]:
    names: list[str] = []
    f.visit(names.append)
    return [*names, "/"]


def _attrs(attrs: Any) -> dict[str, Any]:
    out = {}
    for k, v in attrs.items():
        if IGNORED_KEYS.match(k):
            continue
        if isinstance(v, bytes):
            v = v.decode()
        if isinstance(v, str):
            try:
                v = json.loads(v)
            except ValueError:
                pass
        elif isinstance(v, np.ndarray):
            v = v.tolist()
        elif isinstance(v, np.generic):
            v = v.item()
        out[k] = v
    return out


def _parquet_meta(table: Any) -> dict[str, Any]:
    meta = table.schema.metadata or {}
    out = {}
    for k, v in meta.items():
        key = k.decode()
        if key == "pandas" or IGNORED_KEYS.match(key):
            continue
        try:
            out[key] = json.loads(v.decode())
        except ValueError:
            out[key] = v.decode()
    return out


def _tensors(obj: Any) -> Any:
    if hasattr(obj, "detach"):
        return obj.detach().cpu().double().numpy().ravel().tolist()
    if isinstance(obj, dict):
        return {str(k): _tensors(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_tensors(v) for v in obj]
    return obj


def files(root: Path, ignore: list[str]) -> Iterator[str]:
    """Result files below ``root`` (hidden temporary files of atomic writes are not results)."""
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.name.startswith(".") and ".tmp" in p.name:
            continue
        if p.is_file() and not any(fnmatch.fnmatch(rel, g) for g in ignore):
            yield rel


def compare_trees(
    before: Path,
    after: Path,
    *,
    rtol: float = 1e-9,
    atol: float = 1e-12,
    onnx_atol: float = 1e-6,
    ignore: list[str] | None = None,
) -> list[str]:
    """Every difference between two result trees, one line each (empty: they agree)."""
    ignore = list(ignore or [])
    cmp = Comparer(rtol, atol, onnx_atol)
    fa, fb = set(files(before, ignore)), set(files(after, ignore))
    for rel in sorted(fa - fb):
        cmp.diff(rel, "only in before")
    for rel in sorted(fb - fa):
        cmp.diff(rel, "only in after")
    for rel in sorted(fa & fb):
        cmp.file(rel, before / rel, after / rel)
    return cmp.diffs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("before", type=Path)
    ap.add_argument("after", type=Path)
    ap.add_argument("--rtol", type=float, default=1e-9)
    ap.add_argument("--atol", type=float, default=1e-12)
    ap.add_argument("--onnx-atol", type=float, default=1e-6)
    ap.add_argument("--ignore", action="append", default=[], help="glob of paths to skip")
    args = ap.parse_args(argv)
    diffs = compare_trees(
        args.before,
        args.after,
        rtol=args.rtol,
        atol=args.atol,
        onnx_atol=args.onnx_atol,
        ignore=args.ignore,
    )
    for line in diffs:
        print(line)
    n = len(set(files(args.before, args.ignore)) | set(files(args.after, args.ignore)))
    print(f"{n} files compared: {'no difference' if not diffs else f'{len(diffs)} difference(s)'}")
    return 0 if not diffs else 1


if __name__ == "__main__":
    sys.exit(main())
