// swift-tools-version: 5.9
// The benchmark harness for packages written by `pipeline export`: Core ML calls and raw
// measurements only (schema/bench-raw.schema.json). Statistics, agreement, the report,
// tables and charts are computed by `pipeline bench` in Rust. No dependencies, so
// `swift build` works offline.
import PackageDescription

let package = Package(
    name: "CoreMLBench",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "coreml-bench", targets: ["coreml-bench"]),
    ],
    targets: [
        .executableTarget(name: "coreml-bench"),
    ]
)
