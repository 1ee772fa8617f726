// Command-line arguments of coreml-bench, parsed by hand so the package has no
// dependencies and builds offline.

/// A Core ML compute-unit setting, named as on the command line and in the report.
public enum ComputeUnitsChoice: String, CaseIterable, Codable, Sendable {
    /// MLComputeUnits.cpuOnly
    case cpu
    /// MLComputeUnits.cpuAndGPU
    case gpu
    /// MLComputeUnits.cpuAndNeuralEngine
    case ane
    /// MLComputeUnits.all
    case all

    /// Whether this setting lets Core ML use the Neural Engine.
    public var allowsNeuralEngine: Bool {
        self == .ane || self == .all
    }
}

/// Everything the command line sets.
public struct BenchOptions: Equatable, Sendable {
    public var modelPath: String
    public var jsonPath: String
    public var computeUnits: [ComputeUnitsChoice] = ComputeUnitsChoice.allCases
    public var warmup = 20
    public var iterations = 200
    public var batchSizes = [1, 8]
    public var imagePaths: [String] = []
    public var referencePath: String?

    public init(modelPath: String, jsonPath: String) {
        self.modelPath = modelPath
        self.jsonPath = jsonPath
    }
}

/// Why the command line was not accepted.
public enum ArgumentError: Error, Equatable, CustomStringConvertible {
    case helpRequested
    case missingModel
    case missingJSONPath
    case extraPositional(String)
    case unknownOption(String)
    case missingValue(option: String)
    case notAnInteger(option: String, value: String)
    case outOfRange(option: String, value: Int, minimum: Int)
    case unknownComputeUnits(String)
    case emptyList(option: String)

    public var description: String {
        switch self {
        case .helpRequested:
            return "help requested"
        case .missingModel:
            return "missing the model: give the path of an .mlpackage (or .mlmodel)"
        case .missingJSONPath:
            return "missing --json OUT: where to write the report"
        case .extraPositional(let value):
            return "unexpected argument `\(value)`: only one model path is taken"
        case .unknownOption(let option):
            return "unknown option `\(option)`"
        case .missingValue(let option):
            return "`\(option)` needs a value"
        case .notAnInteger(let option, let value):
            return "`\(option)` takes whole numbers, got `\(value)`"
        case .outOfRange(let option, let value, let minimum):
            return "`\(option)` must be at least \(minimum), got \(value)"
        case .unknownComputeUnits(let value):
            let known = ComputeUnitsChoice.allCases.map(\.rawValue).joined(separator: ", ")
            return "unknown compute units `\(value)` (known: \(known))"
        case .emptyList(let option):
            return "`\(option)` needs at least one value"
        }
    }
}

public enum ArgumentParser {
    public static let usage = """
        usage: coreml-bench MODEL.mlpackage --json OUT.json [options]

        options:
          --compute-units LIST   cpu,gpu,ane,all (default: all four, in that order)
          --warmup N             untimed predictions before timing (default 20)
          --iterations N         timed single predictions (default 200)
          --batch LIST           batch sizes for predictions(fromBatch:) (default 1,8)
          --image FILE...        images to run instead of the synthetic input
          --reference FILE       JSON with inputs and expected outputs
                                 (schema/bench-report.schema.json, $defs/reference_file)
          --json OUT             where to write the report (required)
          -h, --help             show this text
        """

    /// Parses the arguments after the program name. Options take their value as the next
    /// argument or after `=` (`--warmup=5`); `--image` takes every following argument
    /// up to the next option, and may be repeated.
    public static func parse(_ arguments: [String]) throws -> BenchOptions {
        var model: String?
        var json: String?
        var computeUnits: [ComputeUnitsChoice]?
        var warmup: Int?
        var iterations: Int?
        var batchSizes: [Int]?
        var images: [String] = []
        var reference: String?

        var remaining = arguments[...]
        while let argument = remaining.popFirst() {
            if argument == "-h" || argument == "--help" {
                throw ArgumentError.helpRequested
            }
            guard argument.hasPrefix("-"), argument != "-" else {
                guard model == nil else { throw ArgumentError.extraPositional(argument) }
                model = argument
                continue
            }
            let (option, inlineValue) = splitInlineValue(argument)
            if option == "--image" {
                images += try imageList(inlineValue: inlineValue, remaining: &remaining)
                continue
            }
            let value = try requireValue(for: option, inline: inlineValue, remaining: &remaining)
            switch option {
            case "--json": json = value
            case "--reference": reference = value
            case "--compute-units": computeUnits = try parseComputeUnits(value, option: option)
            case "--warmup": warmup = try parseInteger(value, option: option, minimum: 0)
            case "--iterations": iterations = try parseInteger(value, option: option, minimum: 1)
            case "--batch": batchSizes = try parseIntegerList(value, option: option, minimum: 1)
            default: throw ArgumentError.unknownOption(option)
            }
        }

        guard let model else { throw ArgumentError.missingModel }
        guard let json else { throw ArgumentError.missingJSONPath }
        var options = BenchOptions(modelPath: model, jsonPath: json)
        options.computeUnits = computeUnits ?? options.computeUnits
        options.warmup = warmup ?? options.warmup
        options.iterations = iterations ?? options.iterations
        options.batchSizes = batchSizes ?? options.batchSizes
        options.imagePaths = images
        options.referencePath = reference
        return options
    }

    /// `--name=value` -> ("--name", "value"); anything else -> (argument, nil).
    static func splitInlineValue(_ argument: String) -> (String, String?) {
        guard argument.hasPrefix("--"), let equals = argument.firstIndex(of: "=") else {
            return (argument, nil)
        }
        let value = String(argument[argument.index(after: equals)...])
        return (String(argument[..<equals]), value)
    }

    static func requireValue(
        for option: String, inline: String?, remaining: inout ArraySlice<String>
    ) throws -> String {
        if let inline {
            guard !inline.isEmpty else { throw ArgumentError.missingValue(option: option) }
            return inline
        }
        // A following option is not a value: `--json --warmup 3` forgot the path.
        guard let next = remaining.first, !next.hasPrefix("--") else {
            throw ArgumentError.missingValue(option: option)
        }
        remaining.removeFirst()
        return next
    }

    static func imageList(inlineValue: String?, remaining: inout ArraySlice<String>) throws -> [String] {
        var files: [String] = []
        if let inlineValue, !inlineValue.isEmpty {
            files.append(inlineValue)
        }
        while let next = remaining.first, !next.hasPrefix("-") {
            files.append(next)
            remaining.removeFirst()
        }
        guard !files.isEmpty else { throw ArgumentError.missingValue(option: "--image") }
        return files
    }

    static func parseInteger(_ value: String, option: String, minimum: Int) throws -> Int {
        guard let number = Int(value.trimmingSpaces()) else {
            throw ArgumentError.notAnInteger(option: option, value: value)
        }
        guard number >= minimum else {
            throw ArgumentError.outOfRange(option: option, value: number, minimum: minimum)
        }
        return number
    }

    static func parseIntegerList(_ value: String, option: String, minimum: Int) throws -> [Int] {
        let items = listItems(value)
        guard !items.isEmpty else { throw ArgumentError.emptyList(option: option) }
        return try items.map { try parseInteger($0, option: option, minimum: minimum) }
    }

    static func parseComputeUnits(_ value: String, option: String) throws -> [ComputeUnitsChoice] {
        let items = listItems(value)
        guard !items.isEmpty else { throw ArgumentError.emptyList(option: option) }
        var choices: [ComputeUnitsChoice] = []
        for item in items {
            guard let choice = ComputeUnitsChoice(rawValue: item.lowercased()) else {
                throw ArgumentError.unknownComputeUnits(item)
            }
            // Measuring a setting twice would only repeat its row in the report.
            if !choices.contains(choice) {
                choices.append(choice)
            }
        }
        return choices
    }

    /// Comma-separated items, spaces around them ignored, empty items dropped.
    static func listItems(_ value: String) -> [String] {
        value.split(separator: ",").map { String($0).trimmingSpaces() }.filter { !$0.isEmpty }
    }
}

extension String {
    /// Without leading and trailing spaces; avoids Foundation so BenchCore stays small.
    func trimmingSpaces() -> String {
        var characters = Substring(self)
        while characters.first == " " { characters.removeFirst() }
        while characters.last == " " { characters.removeLast() }
        return String(characters)
    }
}
