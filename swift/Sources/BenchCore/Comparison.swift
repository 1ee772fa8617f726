// Comparing one set of outputs with another: a compute unit against .cpuOnly, or
// against the reference file. Outputs are flattened per example, in the same order on
// both sides (multiarrays row-major; class-probability dictionaries by class label).

/// One example's outputs, by feature name.
public typealias ExampleOutputs = [String: [Float]]

public enum ComparisonError: Error, Equatable, CustomStringConvertible {
    case exampleCountMismatch(output: String, candidate: Int, baseline: Int)
    case elementCountMismatch(output: String, example: Int, candidate: Int, baseline: Int)

    public var description: String {
        switch self {
        case .exampleCountMismatch(let output, let candidate, let baseline):
            return "`\(output)`: \(candidate) examples against \(baseline) in the baseline"
        case .elementCountMismatch(let output, let example, let candidate, let baseline):
            return "`\(output)`, example \(example): \(candidate) values against \(baseline) in the baseline"
        }
    }
}

public enum OutputComparer {
    /// Outputs whose argmax is a class: top-1 agreement is reported for these.
    public static let classScoreOutputs: Set<String> = ["logits", "classLabel_probs"]

    /// Compares every output present on both sides, in name order.
    public static func compare(
        candidate: [ExampleOutputs], baseline: [ExampleOutputs], baselineName: AgreementBaseline
    ) throws -> Agreement {
        let candidateNames = Set(candidate.first?.keys.map { $0 } ?? [])
        let baselineNames = Set(baseline.first?.keys.map { $0 } ?? [])
        let shared = candidateNames.intersection(baselineNames).sorted()
        let comparisons = try shared.map { name in
            try compare(
                output: name,
                candidate: candidate.map { $0[name] ?? [] },
                baseline: baseline.map { $0[name] ?? [] }
            )
        }
        return Agreement(baseline: baselineName, examples: baseline.count, outputs: comparisons)
    }

    /// Compares one output over all examples.
    public static func compare(output: String, candidate: [[Float]], baseline: [[Float]]) throws -> OutputComparison {
        guard candidate.count == baseline.count else {
            throw ComparisonError.exampleCountMismatch(
                output: output, candidate: candidate.count, baseline: baseline.count)
        }
        var maxDifference: Float = 0
        var baselineScale: Float = 0
        var elements = 0
        var agreeing = 0
        for (index, (mine, theirs)) in zip(candidate, baseline).enumerated() {
            guard mine.count == theirs.count else {
                throw ComparisonError.elementCountMismatch(
                    output: output, example: index, candidate: mine.count, baseline: theirs.count)
            }
            for (a, b) in zip(mine, theirs) {
                maxDifference = max(maxDifference, abs(a - b))
                baselineScale = max(baselineScale, abs(b))
            }
            elements += mine.count
            if argmax(mine) == argmax(theirs) {
                agreeing += 1
            }
        }
        let isClassScores = classScoreOutputs.contains(output) && !baseline.isEmpty
        return OutputComparison(
            output: output,
            elements: elements,
            maxAbsDiff: Double(maxDifference),
            baselineMaxAbs: Double(baselineScale),
            top1Agreement: isClassScores ? Double(agreeing) / Double(baseline.count) : nil
        )
    }

    /// Index of the largest value (the first on ties), nil for no values. NaN never wins,
    /// so a NaN output disagrees with any finite one.
    public static func argmax(_ values: [Float]) -> Int? {
        var best: Int?
        for (index, value) in values.enumerated() where !value.isNaN {
            if let current = best, values[current] >= value { continue }
            best = index
        }
        return best
    }
}
