// The raw measurements coreml-bench writes: Core ML's answers and timings, nothing
// computed. Each type mirrors one object of schema/bench-raw.schema.json (the `// schema:`
// line names it; scripts/check_swift.py compares CodingKeys and optionality with it).
// Statistics, agreement and the report are computed in Rust (src/bench/raw.rs).
// Optional properties are left out of the JSON when nil (encodeIfPresent).

// schema: #
struct RawRun: Codable {
    var format = "coreml-bench-raw"
    var version = 1
    var tool: ToolInfo
    var createdAt: String
    var machine: MachineInfo
    var model: ModelInfo
    var settings: Settings
    var units: [RawUnit]
    enum CodingKeys: String, CodingKey {
        case format, version, tool, machine, model, settings, units, createdAt = "created_at"
    }
}

// schema: #/$defs/tool
struct ToolInfo: Codable {
    var name = "coreml-bench"
    var version = "0.2.0"
    enum CodingKeys: String, CodingKey { case name, version }
}

// schema: #/$defs/thermal_state
enum ThermalStateName: String, Codable { case nominal, fair, serious, critical, unknown }

// schema: #/$defs/machine
struct MachineInfo: Codable {
    var chip: String
    var hardwareModel: String?
    var osVersion: String
    var processorCount: Int?
    var memoryBytes: Int?
    var thermalStateStart: ThermalStateName
    var thermalStateEnd: ThermalStateName
    enum CodingKeys: String, CodingKey {
        case chip, hardwareModel = "hardware_model", osVersion = "os_version"
        case processorCount = "processor_count", memoryBytes = "memory_bytes"
        case thermalStateStart = "thermal_state_start", thermalStateEnd = "thermal_state_end"
    }
}

// schema: #/$defs/feature/properties/kind
enum FeatureKind: String, Codable { case image, multiarray, dictionary, string, int64, double, other }

// schema: #/$defs/feature
struct FeatureInfo: Codable {
    var name: String
    var kind: FeatureKind
    var shape: [Int]?
    var dataType: String?
    enum CodingKeys: String, CodingKey { case name, kind, shape, dataType = "data_type" }
}

// schema: #/$defs/model_info
struct ModelInfo: Codable {
    var path: String
    var inputs: [FeatureInfo]
    var outputs: [FeatureInfo]
    var metadata: [String: String]
    var compileMilliseconds: Double
    enum CodingKeys: String, CodingKey {
        case path, inputs, outputs, metadata, compileMilliseconds = "compile_ms"
    }
}

// schema: #/$defs/compute_units
enum ComputeUnitsChoice: String, Codable, CaseIterable { case cpu, gpu, ane, all }

// schema: #/$defs/settings/properties/input_source
enum InputSource: String, Codable { case synthetic, images, reference }

// schema: #/$defs/settings
struct Settings: Codable {
    var computeUnits: [ComputeUnitsChoice]
    var warmup: Int
    var iterations: Int
    var batchSizes: [Int]
    var inputSource: InputSource
    var images: [String]?
    var reference: String?
    var examples: Int
    enum CodingKeys: String, CodingKey {
        case warmup, iterations, images, reference, examples, computeUnits = "compute_units"
        case batchSizes = "batch_sizes", inputSource = "input_source"
    }
}

// schema: #/$defs/load_times
struct LoadTimes: Codable {
    var coldMilliseconds: Double
    var warmMilliseconds: Double
    enum CodingKeys: String, CodingKey {
        case coldMilliseconds = "cold_ms", warmMilliseconds = "warm_ms"
    }
}

// schema: #/$defs/batch
struct RawBatch: Codable {
    var batchSize: Int
    var callsMilliseconds: [Double]?
    var stacked: Bool?
    var error: String?
    enum CodingKeys: String, CodingKey {
        case error, stacked, batchSize = "batch_size", callsMilliseconds = "calls_ms"
    }
}

// schema: #/$defs/device
enum DeviceName: String, Codable { case cpu, gpu, ane, unknown }

// schema: #/$defs/plan_op
struct PlanOp: Codable {
    var output: String
    var operatorName: String
    var preferred: DeviceName
    var supported: [DeviceName]?
    var cost: Double?
    enum CodingKeys: String, CodingKey {
        case output, preferred, supported, cost, operatorName = "operator"
    }
}

// schema: #/$defs/compute_plan
struct ComputePlan: Codable {
    var ops: [PlanOp]
    enum CodingKeys: String, CodingKey { case ops }
}

// schema: #/$defs/output_value/properties/kind
enum OutputKind: String, Codable { case multiarray, dictionary, string, number }

// schema: #/$defs/output_value
struct OutputValue: Codable {
    var kind: OutputKind
    var shape: [Int]?
    var data: [Float]?
    var labels: [String]?
    var string: String?
    enum CodingKeys: String, CodingKey { case kind, shape, data, labels, string }
}

// schema: #/$defs/unit
struct RawUnit: Codable {
    var computeUnits: ComputeUnitsChoice
    var error: String?
    var load: LoadTimes?
    var firstPredictionMilliseconds: Double?
    var latenciesMilliseconds: [Double]?
    var batches: [RawBatch]?
    var computePlan: ComputePlan?
    var computePlanError: String?
    var outputs: [[String: OutputValue]]?
    enum CodingKeys: String, CodingKey {
        case error, load, batches, outputs, computeUnits = "compute_units"
        case firstPredictionMilliseconds = "first_prediction_ms"
        case latenciesMilliseconds = "latencies_ms", computePlan = "compute_plan"
        case computePlanError = "compute_plan_error"
    }
}

// The --reference file (schema/bench-report.schema.json, $defs/reference_file), read
// for its inputs only; Rust compares with its outputs.

// schema: bench-report.schema.json#/$defs/reference_tensor
struct ReferenceTensor: Codable {
    var shape: [Int]
    var data: [Float]
    enum CodingKeys: String, CodingKey { case shape, data }

    /// Values of example `index` (the leading axis), row-major.
    func example(_ index: Int) -> [Float] {
        let size = shape.dropFirst().reduce(1, *)
        return Array(data[(index * size)..<((index + 1) * size)])
    }
}

// schema: bench-report.schema.json#/$defs/reference_file
struct ReferenceFile: Codable {
    var format: String
    var version: Int
    var source: String?
    var inputs: [String: ReferenceTensor]
    var outputs: [String: ReferenceTensor]
    var classLabels: [String]?
    enum CodingKeys: String, CodingKey {
        case format, version, source, inputs, outputs, classLabels = "class_labels"
    }
}
