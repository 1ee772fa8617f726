#!/usr/bin/env python3
"""Decompresses a package's compressed weights with coremltools, independently of this
project: `ct.optimize.coreml.decompress_weights` turns every `constexpr_*` op back into
a `const`, and the dense values of those consts (named as the constexpr ops' outputs)
are written to a safetensors file, in their own type (F16 or F32). Runs on Linux (no
Core ML runtime needed).

Usage: check_decompress.py PKG.mlpackage OUT.safetensors [PKG OUT ...]
Exits 0 when every package decompresses, 1 when one cannot be decompressed (or has no
compressed weights), 2 when coremltools is missing.
"""

import json
import struct
import sys


def write_safetensors(path, tensors):
    import numpy as np

    header, blobs, offset = {}, [], 0
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        dtype = {np.dtype("float16"): "F16", np.dtype("float32"): "F32"}[a.dtype]
        data = a.astype(a.dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": dtype, "shape": list(a.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def decompress(path):
    import coremltools as ct
    from coremltools.converters.mil.frontend.milproto.load import load as milproto_load

    model = ct.models.MLModel(path, skip_model_load=True)
    spec = model.get_spec()
    main = spec.mlProgram.functions["main"]
    ops = main.block_specializations[main.opset].operations
    names = [o.name for op in ops if op.type.startswith("constexpr_") for o in op.outputs]
    if not names:
        raise ValueError("no constexpr ops: nothing is compressed")

    dense = ct.optimize.coreml.decompress_weights(model)
    dspec = dense.get_spec()
    prog = milproto_load(dspec, dspec.specificationVersion, file_weights_dir=dense.weights_dir)
    left = [op.op_type for op in prog.functions["main"].operations if op.op_type.startswith("constexpr_")]
    if left:
        raise ValueError(f"constexpr ops left after decompression: {left}")
    found = {}
    for op in prog.functions["main"].operations:
        if op.op_type == "const" and op.outputs[0].name in names:
            found[op.outputs[0].name] = op.outputs[0].val
    missing = [n for n in names if n not in found]
    if missing:
        raise ValueError(f"decompressed program lacks consts {missing}")
    return found


def main(argv):
    if len(argv) < 3 or len(argv) % 2 != 1:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        import coremltools  # noqa: F401
    except ImportError:
        print("coremltools is not installed (pip install coremltools)", file=sys.stderr)
        return 2
    failed = 0
    for pkg, out in zip(argv[1::2], argv[2::2]):
        try:
            found = decompress(pkg)
            write_safetensors(out, found)
            print(f"ok    {pkg}: {len(found)} weights decompressed -> {out}")
        except Exception as e:  # report every package, then fail
            failed += 1
            print(f"FAIL  {pkg}: {type(e).__name__}: {e}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
