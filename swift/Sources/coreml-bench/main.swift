// coreml-bench: runs a Core ML package on each compute-unit setting and writes what Core
// ML did as raw JSON (schema/bench-raw.schema.json). `pipeline bench` builds and runs it,
// then computes the report (statistics, agreement, tables, charts) in Rust.
import Foundation

let usage = """
    usage: coreml-bench MODEL.mlpackage --json OUT.json [--compute-units cpu,gpu,ane,all]
           [--warmup 20] [--iterations 200] [--batch 1,8] [--image=FILE ...] [--reference FILE]
    """

struct Options {
    var model = "", json = ""
    var units = ComputeUnitsChoice.allCases
    var warmup = 20, iterations = 200
    var batches = [1, 8]
    var images: [String] = []
    var reference: String?
}

struct UsageError: Error, CustomStringConvertible { var description: String }

/// `--name value` or `--name=value`; `--image` may repeat. Values are checked in Rust
/// before the harness is started, so only their form is checked here.
func parse(_ arguments: [String]) throws -> Options {
    var options = Options()
    var rest = arguments[...]
    func integers(_ text: String) throws -> [Int] {
        let values = text.split(separator: ",").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }
        guard !values.isEmpty, values.allSatisfy({ $0 >= 0 }) else { throw UsageError(description: "bad number list `\(text)`") }
        return values
    }
    while let argument = rest.popFirst() {
        var name = argument
        var value: String?
        if let equals = argument.firstIndex(of: "="), argument.hasPrefix("--") {
            name = String(argument[..<equals])
            value = String(argument[argument.index(after: equals)...])
        }
        guard name.hasPrefix("--") else {
            options.model = argument
            continue
        }
        guard let text = value ?? rest.popFirst() else { throw UsageError(description: "`\(name)` needs a value") }
        switch name {
        case "--json": options.json = text
        case "--reference": options.reference = text
        case "--image": options.images.append(text)
        case "--warmup": options.warmup = try integers(text)[0]
        case "--iterations": options.iterations = try max(1, integers(text)[0])
        case "--batch": options.batches = try integers(text).filter { $0 > 0 }
        case "--compute-units":
            options.units = try text.split(separator: ",").map {
                guard let unit = ComputeUnitsChoice(rawValue: $0.lowercased()) else {
                    throw UsageError(description: "unknown compute units `\($0)`")
                }
                return unit
            }
        default: throw UsageError(description: "unknown option `\(name)`")
        }
    }
    guard !options.model.isEmpty, !options.json.isEmpty else { throw UsageError(description: "give MODEL and --json OUT") }
    return options
}

func fail(_ message: String, status: Int32) -> Never {
    FileHandle.standardError.write(Data("coreml-bench: \(message)\n".utf8))
    exit(status)
}

let options: Options
do {
    options = try parse(Array(CommandLine.arguments.dropFirst()))
} catch {
    fail("\(error)\n\(usage)", status: 2)
}

#if canImport(CoreML)
do {
    let run = try await BenchmarkRun(options: options).run()
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys]
    let url = URL(fileURLWithPath: options.json)
    try encoder.encode(run).write(to: url, options: .atomic)
    print("raw measurements: \(url.path)")
} catch {
    fail("\(error)", status: 1)
}
#else
fail("Core ML is not available here; run it on macOS 14 or later.", status: 3)
#endif
