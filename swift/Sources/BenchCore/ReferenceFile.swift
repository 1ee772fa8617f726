// The --reference file: inputs and the outputs expected for them, as named float arrays
// (schema/bench-report.schema.json, $defs/reference_file). The leading axis of every
// tensor is the example.
import Foundation

// schema: #/$defs/reference_tensor
public struct ReferenceTensor: Codable, Equatable, Sendable {
    public var shape: [Int]
    public var data: [Float]

    enum CodingKeys: String, CodingKey {
        case shape
        case data
    }

    public init(shape: [Int], data: [Float]) {
        self.shape = shape
        self.data = data
    }

    /// Number of examples: the leading axis.
    public var examples: Int { shape.first ?? 0 }

    /// Values per example.
    public var elementsPerExample: Int { shape.dropFirst().reduce(1, *) }

    /// The values of example `index`, row-major.
    public func example(_ index: Int) -> [Float] {
        let size = elementsPerExample
        return Array(data[(index * size)..<((index + 1) * size)])
    }
}

// schema: #/$defs/reference_file
public struct ReferenceFile: Codable, Equatable, Sendable {
    public static let formatName = "coreml-bench-reference"
    public static let formatVersion = 1

    public var format: String
    public var version: Int
    public var source: String?
    public var inputs: [String: ReferenceTensor]
    public var outputs: [String: ReferenceTensor]
    public var classLabels: [String]?

    enum CodingKeys: String, CodingKey {
        case format
        case version
        case source
        case inputs
        case outputs
        case classLabels = "class_labels"
    }

    /// Reads and checks a reference file.
    public static func load(from url: URL) throws -> ReferenceFile {
        let data: Data
        do {
            data = try Data(contentsOf: url)
        } catch {
            throw ReferenceFileError.unreadable(path: url.path, reason: "\(error)")
        }
        let file: ReferenceFile
        do {
            file = try JSONDecoder().decode(ReferenceFile.self, from: data)
        } catch {
            throw ReferenceFileError.malformed(path: url.path, reason: "\(error)")
        }
        try file.validate()
        return file
    }

    /// Checks what the schema cannot say: sizes match shapes, one example count for all.
    public func validate() throws {
        guard format == Self.formatName, version == Self.formatVersion else {
            throw ReferenceFileError.wrongFormat(format: format, version: version)
        }
        guard !inputs.isEmpty, !outputs.isEmpty else { throw ReferenceFileError.empty }
        let named = inputs.sorted { $0.key < $1.key } + outputs.sorted { $0.key < $1.key }
        var examples: Int?
        for (name, tensor) in named {
            let expected = tensor.shape.reduce(1, *)
            guard !tensor.shape.isEmpty, tensor.shape.allSatisfy({ $0 > 0 }), expected == tensor.data.count else {
                throw ReferenceFileError.sizeMismatch(name: name, shape: tensor.shape, values: tensor.data.count)
            }
            if let examples, examples != tensor.examples {
                throw ReferenceFileError.exampleCountMismatch(name: name, found: tensor.examples, expected: examples)
            }
            examples = tensor.examples
        }
        if let labels = classLabels, let probabilities = outputs["classLabel_probs"],
            labels.count != probabilities.elementsPerExample
        {
            throw ReferenceFileError.classLabelCount(labels: labels.count, columns: probabilities.elementsPerExample)
        }
    }

    /// Number of examples (validated to be the same for every tensor).
    public var examples: Int { inputs.values.first?.examples ?? 0 }

    /// The expected outputs of every example, in the order the bench flattens its own:
    /// class probabilities are reordered from `class_labels` order to label order.
    public func expectedOutputs() -> [ExampleOutputs] {
        (0..<examples).map { index in
            var outputsOfExample: ExampleOutputs = [:]
            for (name, tensor) in outputs {
                let values = tensor.example(index)
                if name == "classLabel_probs", let labels = classLabels {
                    outputsOfExample[name] = Self.sortedByLabel(values, labels: labels)
                } else {
                    outputsOfExample[name] = values
                }
            }
            return outputsOfExample
        }
    }

    static func sortedByLabel(_ values: [Float], labels: [String]) -> [Float] {
        zip(labels, values).sorted { $0.0 < $1.0 }.map(\.1)
    }
}

public enum ReferenceFileError: Error, Equatable, CustomStringConvertible {
    case unreadable(path: String, reason: String)
    case malformed(path: String, reason: String)
    case wrongFormat(format: String, version: Int)
    case empty
    case sizeMismatch(name: String, shape: [Int], values: Int)
    case exampleCountMismatch(name: String, found: Int, expected: Int)
    case classLabelCount(labels: Int, columns: Int)

    public var description: String {
        switch self {
        case .unreadable(let path, let reason):
            return "cannot read reference file \(path): \(reason)"
        case .malformed(let path, let reason):
            return "reference file \(path) does not follow $defs/reference_file: \(reason)"
        case .wrongFormat(let format, let version):
            return "reference file is `\(format)` version \(version); expected `\(ReferenceFile.formatName)` version \(ReferenceFile.formatVersion)"
        case .empty:
            return "reference file needs at least one input and one output"
        case .sizeMismatch(let name, let shape, let values):
            return "reference tensor `\(name)`: shape \(shape) does not hold \(values) values"
        case .exampleCountMismatch(let name, let found, let expected):
            return "reference tensor `\(name)` has \(found) examples, the others \(expected)"
        case .classLabelCount(let labels, let columns):
            return "class_labels has \(labels) names but classLabel_probs has \(columns) columns"
        }
    }
}
