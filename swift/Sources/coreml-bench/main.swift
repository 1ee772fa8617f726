// coreml-bench: measures a Core ML package on every compute-unit setting and writes
// a JSON report (schema/bench-report.schema.json). See `coreml-bench --help`.
import BenchCore
import Foundation

/// Writes a line to standard error; results go to stdout, diagnostics here.
func printError(_ message: String) {
    FileHandle.standardError.write(Data((message + "\n").utf8))
}

let options: BenchOptions
do {
    options = try ArgumentParser.parse(Array(CommandLine.arguments.dropFirst()))
} catch ArgumentError.helpRequested {
    print(ArgumentParser.usage)
    exit(0)
} catch {
    printError("coreml-bench: \(error)\n\n\(ArgumentParser.usage)")
    exit(2)
}

#if canImport(CoreML)
do {
    let report = try await BenchmarkRun(options: options).run()
    let reportURL = URL(fileURLWithPath: options.jsonPath)
    try ReportEncoding.write(report, to: reportURL)
    print(RunSummary.lines(for: report).joined(separator: "\n"))
    print("report: \(reportURL.path)")
} catch {
    printError("coreml-bench: \(error)")
    exit(1)
}
#else
printError("coreml-bench: Core ML is not available here; run it on macOS 14 or later.")
exit(3)
#endif
