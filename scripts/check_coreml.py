#!/usr/bin/env python3
"""Checks .mlpackage files with coremltools (no Core ML runtime needed, so it runs on
Linux): parses each package's spec, then rebuilds its MIL program through coremltools'
builder, which type-checks every op and reads every weight from weight.bin.

Usage: check_coreml.py [--ane] PKG.mlpackage [PKG.mlpackage ...]
--ane: also require the Neural Engine layout: no `linear` op and no value above rank 4
in the program coremltools rebuilt.
Exits 0 when every package passes, 1 otherwise, 2 when coremltools is missing.
"""

import collections
import os
import sys
import traceback


def check_ane(main):
    """No `linear`, nothing above rank 4, in coremltools' own reading of the program."""
    for op in main.operations:
        if op.op_type == "linear":
            raise ValueError(f"ANE layout: `linear` op {op.name}")
        for v in op.outputs:
            from coremltools.converters.mil.mil import types

            if not types.is_tensor(v.sym_type):
                continue
            shape = v.shape
            if len(shape) > 4:
                raise ValueError(f"ANE layout: {v.name} has rank {len(shape)} ({shape})")


def check(path, ane=False):
    import coremltools as ct
    from coremltools.converters.mil.frontend.milproto.load import load as milproto_load

    model = ct.models.MLModel(path, skip_model_load=True)
    spec = model.get_spec()
    if spec.WhichOneof("Type") != "mlProgram":
        raise ValueError("not an ML Program")
    weights_dir = model.weights_dir
    if not weights_dir or not os.path.isdir(weights_dir):
        raise ValueError(f"weights folder not found ({weights_dir!r})")
    prog = milproto_load(spec, spec.specificationVersion, file_weights_dir=weights_dir)

    main = prog.functions["main"]
    counts = collections.Counter(op.op_type for op in main.operations)
    # The description and the program must name the same features.
    desc_in = [f.name for f in spec.description.input]
    desc_out = [f.name for f in spec.description.output]
    prog_in = list(main.inputs.keys())
    prog_out = [v.name for v in main.outputs]
    if desc_in != prog_in:
        raise ValueError(f"description inputs {desc_in} != program inputs {prog_in}")
    if desc_out != prog_out:
        raise ValueError(f"description outputs {desc_out} != program outputs {prog_out}")
    # Flexible inputs: every enumerated shape fits the program's input type.
    from coremltools.converters.mil.mil.types.symbolic import is_symbolic

    for f in spec.description.input:
        if f.type.WhichOneof("Type") != "multiArrayType":
            continue
        a = f.type.multiArrayType
        prog_shape = main.inputs[f.name].shape
        if a.WhichOneof("ShapeFlexibility") == "enumeratedShapes":
            for es in a.enumeratedShapes.shapes:
                if len(es.shape) != len(prog_shape) or any(
                    not is_symbolic(p) and int(p) != int(e) for p, e in zip(prog_shape, es.shape)
                ):
                    raise ValueError(f"input {f.name}: enumerated shape {tuple(es.shape)} does not fit {prog_shape}")
        elif any(is_symbolic(p) for p in prog_shape):
            raise ValueError(f"input {f.name}: program shape {prog_shape} is flexible, the description lists no shapes")
    # multiArray outputs: declared shape and dtype must be what type inference found.
    arr = {
        "FLOAT32": "fp32",
        "FLOAT16": "fp16",
    }
    from coremltools.converters.mil.mil import types

    for f, var in zip(spec.description.output, main.outputs):
        kind = f.type.WhichOneof("Type")
        if kind == "multiArrayType":
            want_dt = arr[ct.proto.FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.Name(f.type.multiArrayType.dataType)]
            got_dt = types.builtin_to_string(var.dtype)
            if want_dt != got_dt:
                raise ValueError(f"output {f.name}: declared {want_dt}, program gives {got_dt}")
            from coremltools.converters.mil.mil.types.symbolic import any_symbolic

            if any_symbolic(var.shape):
                # A flexible batch: coremltools itself leaves such shapes out.
                if len(f.type.multiArrayType.shape) != 0:
                    raise ValueError(f"output {f.name}: flexible {var.shape} but declared {tuple(f.type.multiArrayType.shape)}")
            elif tuple(f.type.multiArrayType.shape) != tuple(var.shape):
                raise ValueError(f"output {f.name}: declared shape {tuple(f.type.multiArrayType.shape)}, program gives {var.shape}")
    if ane:
        check_ane(main)
    if spec.description.predictedFeatureName and counts.get("classify", 0) != 1:
        raise ValueError("classifier description without a classify op")
    return spec.specificationVersion, main.opset_version, counts, spec.description.metadata.userDefined


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        import coremltools as ct
    except ImportError:
        print("coremltools is not installed (pip install coremltools)", file=sys.stderr)
        return 2
    print(f"coremltools {ct.__version__}")
    failed = 0
    ane = "--ane" in argv[1:]
    paths = [a for a in argv[1:] if a != "--ane"]
    for path in paths:
        try:
            ver, opset, counts, _ = check(path, ane)
            ops = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
            print(f"ok    {path}: spec {ver}, {opset}, {sum(counts.values())} ops ({ops})")
        except Exception as e:  # report every package, then fail
            failed += 1
            print(f"FAIL  {path}: {type(e).__name__}: {e}")
            if os.environ.get("CHECK_COREML_TRACEBACK"):
                traceback.print_exc()
    print(f"{len(paths) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
