#!/usr/bin/env python3
"""Compresses one of our uncompressed .mlpackage files with coremltools' own
`ct.optimize.coreml` and writes, per method, the compressed package and
`decompress_weights`' package of it: the independent reference for our interpreter's
reading of `constexpr_*` ops (tests/interp_constexpr.rs).

    make_compressed_reference.py MODEL.mlpackage OUT_DIR [--weight-threshold N] [--only NAME,...]

The package's specification version picks the methods: spec 7/8 (iOS16/17) gets the
attribute-form ops, spec 9+ (iOS18) the input-form ones with sub-byte types and chains.
OUT_DIR receives NAME.mlpackage and NAME.decompressed.mlpackage per method and
manifest.json: {NAME: {"compressed": path, "decompressed": path,
"ops": {op_type: count}, "params": {op_type: {param: [form, dtype, where]}}}}
(form "attr" or "input", dtype the MIL DataType number, where "blob" / "immediate" /
"binding").
"""

import argparse
import json
import os
import sys
import warnings
from collections import Counter

warnings.filterwarnings("ignore")

import coremltools as ct  # noqa: E402
import coremltools.optimize.coreml as cto  # noqa: E402


def methods(spec_version, thr):
    """(name, [(compress function, config, joint_compression)]) per method."""
    lin = cto.OpLinearQuantizerConfig
    pal = cto.OpPalettizerConfig
    prune = cto.OpMagnitudePrunerConfig

    def one(fn, op, joint=False):
        return (fn, cto.OptimizationConfig(global_config=op), joint)

    q, p, s = cto.linear_quantize_weights, cto.palettize_weights, cto.prune_weights
    common = [
        ("int8-per-channel", [one(q, lin(mode="linear_symmetric", dtype="int8",
                                         granularity="per_channel", weight_threshold=thr))]),
        ("uint8-linear-per-tensor", [one(q, lin(mode="linear", dtype="uint8",
                                                granularity="per_tensor",
                                                weight_threshold=thr))]),
        ("prune-50", [one(s, prune(target_sparsity=0.5, weight_threshold=thr))]),
    ]
    for nbits in (1, 2, 4, 6, 8):
        common.append((f"lut{nbits}-per-tensor",
                       [one(p, pal(mode="kmeans", nbits=nbits, granularity="per_tensor",
                                   weight_threshold=thr))]))
    if spec_version < 9:
        return common
    ios18 = [
        ("int4-per-block-32", [one(q, lin(mode="linear_symmetric", dtype="int4",
                                          granularity="per_block", block_size=32,
                                          weight_threshold=thr))]),
        ("uint4-linear-per-block-16", [one(q, lin(mode="linear", dtype="uint4",
                                                  granularity="per_block", block_size=16,
                                                  weight_threshold=thr))]),
        ("int8-per-block-16", [one(q, lin(mode="linear", dtype="int8",
                                          granularity="per_block", block_size=16,
                                          weight_threshold=thr))]),
        ("lut3-per-tensor", [one(p, pal(mode="kmeans", nbits=3, granularity="per_tensor",
                                        weight_threshold=thr))]),
        ("lut4-grouped-16", [one(p, pal(mode="kmeans", nbits=4,
                                        granularity="per_grouped_channel", group_size=16,
                                        weight_threshold=thr))]),
        ("lut2-grouped-8", [one(p, pal(mode="kmeans", nbits=2,
                                       granularity="per_grouped_channel", group_size=8,
                                       weight_threshold=thr))]),
        ("lut4-vector-2", [one(p, pal(mode="kmeans", nbits=4, granularity="per_tensor",
                                      cluster_dim=2, weight_threshold=thr))]),
        # Chains: a per-channel scale applied to a LUT's output; an int8-quantized LUT.
        ("lut4-per-channel-scale", [one(p, pal(mode="kmeans", nbits=4,
                                               granularity="per_tensor",
                                               enable_per_channel_scale=True,
                                               weight_threshold=thr))]),
        ("lut4-int8-lut", [
            one(p, pal(mode="kmeans", nbits=4, granularity="per_grouped_channel",
                       group_size=16, weight_threshold=thr)),
            one(q, lin(mode="linear_symmetric", dtype="int8", granularity="per_tensor",
                       weight_threshold=1), joint=True),
        ]),
        # Quantized, then palettized jointly: an int8 LUT whose int8 output feeds
        # the dequantizing op.
        ("int8-then-lut4", [
            one(q, lin(mode="linear_symmetric", dtype="int8", granularity="per_channel",
                       weight_threshold=thr)),
            one(p, pal(mode="kmeans", nbits=4, granularity="per_tensor",
                       weight_threshold=thr), joint=True),
        ]),
        # Pruned, then quantized or palettized jointly: sparse-form ops feeding
        # constexpr_sparse_to_dense.
        ("prune-then-int8", [
            one(s, prune(target_sparsity=0.5, weight_threshold=thr)),
            one(q, lin(mode="linear_symmetric", dtype="int8", granularity="per_channel",
                       weight_threshold=thr), joint=True),
        ]),
        ("prune-then-lut4", [
            one(s, prune(target_sparsity=0.5, weight_threshold=thr)),
            one(p, pal(mode="kmeans", nbits=4, granularity="per_tensor",
                       weight_threshold=thr), joint=True),
        ]),
    ]
    return common + ios18


def main_block(spec):
    f = spec.mlProgram.functions["main"]
    return f.block_specializations[f.opset]


def describe(spec):
    """Op counts and, per constexpr op type, how each parameter was written."""
    ops, params = Counter(), {}
    for op in main_block(spec).operations:
        if not op.type.startswith("constexpr_"):
            continue
        ops[op.type] += 1
        seen = params.setdefault(op.type, {})
        for k, v in op.attributes.items():
            if k != "name":
                seen[k] = ["attr", v.type.tensorType.dataType, v.WhichOneof("value")]
        for k, arg in op.inputs.items():
            b = arg.arguments[0]
            if b.WhichOneof("binding") == "name":
                seen[k] = ["input", None, "binding"]
            else:
                v = b.value
                where = "blob" if v.WhichOneof("value") == "blobFileValue" else "immediate"
                seen[k] = ["input", v.type.tensorType.dataType, where]
    return dict(ops), params


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("out")
    ap.add_argument("--weight-threshold", type=int, default=512)
    ap.add_argument("--only", default="", help="comma-separated method names")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    base = ct.models.MLModel(a.model, skip_model_load=True)
    sv = base.get_spec().specificationVersion
    only = set(filter(None, a.only.split(",")))
    manifest = {}
    for name, steps in methods(sv, a.weight_threshold):
        if only and name not in only:
            continue
        m = base
        for fn, cfg, joint in steps:
            m = fn(m, cfg, joint_compression=joint) if joint else fn(m, cfg)
        comp = os.path.join(a.out, f"{name}.mlpackage")
        m.save(comp)
        # Re-read what was written, so the reference is the saved package.
        m = ct.models.MLModel(comp, skip_model_load=True)
        dec = os.path.join(a.out, f"{name}.decompressed.mlpackage")
        cto.decompress_weights(m).save(dec)
        ops, params = describe(m.get_spec())
        left, _ = describe(ct.models.MLModel(dec, skip_model_load=True).get_spec())
        if left:
            sys.exit(f"{name}: decompressed package still has {left}")
        manifest[name] = {"compressed": comp, "decompressed": dec, "ops": ops,
                          "params": params}
        print(f"{name}: {ops}", flush=True)
    with open(os.path.join(a.out, "manifest.json"), "w") as f:
        json.dump({"specification_version": sv, "methods": manifest}, f, indent=1)


if __name__ == "__main__":
    main()
