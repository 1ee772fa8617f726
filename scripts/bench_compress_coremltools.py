#!/usr/bin/env python3
"""coremltools' side of `make bench-compress`: compresses one of our fp16 packages with
`ct.optimize.coreml` the way its documentation shows, and prints wall time and peak RSS
as one JSON line. Run once per method in a fresh process so peak RSS is that method's.

    python3 bench_compress_coremltools.py PKG METHOD OUT
    METHOD: int8 | palette8 | palette6 | palette4 | palette2 | int4
"""
import json
import resource
import sys
import time
import warnings

warnings.filterwarnings("ignore")


def main():
    pkg, method, out = sys.argv[1:4]
    import coremltools as ct
    import coremltools.optimize.coreml as cto

    t0 = time.perf_counter()
    model = ct.models.MLModel(pkg, skip_model_load=True)
    if method == "int8":
        op = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", granularity="per_channel")
        compressed = cto.linear_quantize_weights(model, cto.OptimizationConfig(global_config=op))
    elif method == "int4":
        op = cto.OpLinearQuantizerConfig(
            mode="linear_symmetric", dtype="int4", granularity="per_block", block_size=32
        )
        compressed = cto.linear_quantize_weights(model, cto.OptimizationConfig(global_config=op))
    elif method.startswith("palette"):
        op = cto.OpPalettizerConfig(mode="kmeans", nbits=int(method[len("palette"):]), granularity="per_tensor")
        compressed = cto.palettize_weights(model, cto.OptimizationConfig(global_config=op))
    else:
        sys.exit(f"unknown method {method}")
    compressed.save(out)
    seconds = time.perf_counter() - t0
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"method": method, "seconds": seconds, "peak_rss_mb": peak_kb / 1024, "coremltools": ct.__version__}))


if __name__ == "__main__":
    main()
