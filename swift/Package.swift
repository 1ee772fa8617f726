// swift-tools-version: 5.9
// The benchmark harness for packages written by `pipeline export`. BenchCore holds
// everything that does not need Core ML (statistics, arguments, the report and its
// JSON), so it builds and tests on Linux too; the executable adds the Core ML part.
// No dependencies: `swift build` must work offline.
import PackageDescription

let package = Package(
    name: "CoreMLBench",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "coreml-bench", targets: ["coreml-bench"]),
        .library(name: "BenchCore", targets: ["BenchCore"]),
    ],
    targets: [
        .target(name: "BenchCore"),
        .executableTarget(name: "coreml-bench", dependencies: ["BenchCore"]),
        .testTarget(name: "BenchCoreTests", dependencies: ["BenchCore"]),
    ]
)
