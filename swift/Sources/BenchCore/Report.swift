// The report coreml-bench writes. Every type mirrors one object of
// schema/bench-report.schema.json; the `// schema:` line above each names it, and
// scripts/check_swift.py compares its CodingKeys with the schema's property names.
// Optional properties are left out of the JSON when nil (synthesised Codable uses
// encodeIfPresent), which is what the schema's `required` lists expect.

/// The report format version; readers reject others.
public let benchReportSchemaVersion = 1

// schema: #
public struct BenchReport: Codable, Equatable, Sendable {
    public var schemaVersion: Int
    public var tool: ToolInfo
    public var createdAt: String
    public var machine: MachineInfo
    public var model: ModelInfo
    public var settings: BenchSettings
    public var units: [UnitResult]

    enum CodingKeys: String, CodingKey {
        case schemaVersion = "schema_version"
        case tool
        case createdAt = "created_at"
        case machine
        case model
        case settings
        case units
    }

    public init(
        tool: ToolInfo, createdAt: String, machine: MachineInfo, model: ModelInfo,
        settings: BenchSettings, units: [UnitResult]
    ) {
        self.schemaVersion = benchReportSchemaVersion
        self.tool = tool
        self.createdAt = createdAt
        self.machine = machine
        self.model = model
        self.settings = settings
        self.units = units
    }
}

// schema: #/$defs/tool
public struct ToolInfo: Codable, Equatable, Sendable {
    public var name: String
    public var version: String

    enum CodingKeys: String, CodingKey {
        case name
        case version
    }

    public init(name: String = "coreml-bench", version: String = "0.1.0") {
        self.name = name
        self.version = version
    }
}

/// ProcessInfo.ThermalState by name.
// schema: #/$defs/thermal_state
public enum ThermalStateName: String, Codable, Sendable {
    case nominal, fair, serious, critical, unknown
}

// schema: #/$defs/machine
public struct MachineInfo: Codable, Equatable, Sendable {
    public var chip: String
    public var hardwareModel: String?
    public var osVersion: String
    public var processorCount: Int?
    public var memoryBytes: Int?
    public var thermalStateStart: ThermalStateName
    public var thermalStateEnd: ThermalStateName

    enum CodingKeys: String, CodingKey {
        case chip
        case hardwareModel = "hardware_model"
        case osVersion = "os_version"
        case processorCount = "processor_count"
        case memoryBytes = "memory_bytes"
        case thermalStateStart = "thermal_state_start"
        case thermalStateEnd = "thermal_state_end"
    }

    public init(
        chip: String, hardwareModel: String? = nil, osVersion: String,
        processorCount: Int? = nil, memoryBytes: Int? = nil,
        thermalStateStart: ThermalStateName, thermalStateEnd: ThermalStateName
    ) {
        self.chip = chip
        self.hardwareModel = hardwareModel
        self.osVersion = osVersion
        self.processorCount = processorCount
        self.memoryBytes = memoryBytes
        self.thermalStateStart = thermalStateStart
        self.thermalStateEnd = thermalStateEnd
    }
}

// schema: #/$defs/feature/properties/kind
public enum FeatureKind: String, Codable, Sendable {
    case image, multiarray, dictionary, string, int64, double, other
}

// schema: #/$defs/feature
public struct FeatureInfo: Codable, Equatable, Sendable {
    public var name: String
    public var kind: FeatureKind
    public var shape: [Int]?
    public var dataType: String?

    enum CodingKeys: String, CodingKey {
        case name
        case kind
        case shape
        case dataType = "data_type"
    }

    public init(name: String, kind: FeatureKind, shape: [Int]? = nil, dataType: String? = nil) {
        self.name = name
        self.kind = kind
        self.shape = shape
        self.dataType = dataType
    }
}

// schema: #/$defs/model_info
public struct ModelInfo: Codable, Equatable, Sendable {
    public var path: String
    public var inputs: [FeatureInfo]
    public var outputs: [FeatureInfo]
    public var metadata: [String: String]
    public var compileMilliseconds: Double

    enum CodingKeys: String, CodingKey {
        case path
        case inputs
        case outputs
        case metadata
        case compileMilliseconds = "compile_ms"
    }

    public init(
        path: String, inputs: [FeatureInfo], outputs: [FeatureInfo],
        metadata: [String: String], compileMilliseconds: Double
    ) {
        self.path = path
        self.inputs = inputs
        self.outputs = outputs
        self.metadata = metadata
        self.compileMilliseconds = compileMilliseconds
    }
}

// schema: #/$defs/settings/properties/input_source
public enum InputSource: String, Codable, Sendable {
    case synthetic, images, reference
}

// schema: #/$defs/settings
public struct BenchSettings: Codable, Equatable, Sendable {
    public var computeUnits: [ComputeUnitsChoice]
    public var warmup: Int
    public var iterations: Int
    public var batchSizes: [Int]
    public var inputSource: InputSource
    public var images: [String]?
    public var reference: String?
    public var examples: Int

    enum CodingKeys: String, CodingKey {
        case computeUnits = "compute_units"
        case warmup
        case iterations
        case batchSizes = "batch_sizes"
        case inputSource = "input_source"
        case images
        case reference
        case examples
    }

    public init(options: BenchOptions, inputSource: InputSource, examples: Int) {
        self.computeUnits = options.computeUnits
        self.warmup = options.warmup
        self.iterations = options.iterations
        self.batchSizes = options.batchSizes
        self.inputSource = inputSource
        self.images = options.imagePaths.isEmpty ? nil : options.imagePaths
        self.reference = options.referencePath
        self.examples = examples
    }
}

// schema: #/$defs/load_times
public struct LoadTimes: Codable, Equatable, Sendable {
    public var coldMilliseconds: Double
    public var warmMilliseconds: Double

    enum CodingKeys: String, CodingKey {
        case coldMilliseconds = "cold_ms"
        case warmMilliseconds = "warm_ms"
    }

    public init(coldMilliseconds: Double, warmMilliseconds: Double) {
        self.coldMilliseconds = coldMilliseconds
        self.warmMilliseconds = warmMilliseconds
    }
}

// schema: #/$defs/latency
public struct Latency: Codable, Equatable, Sendable {
    public var count: Int
    public var meanMilliseconds: Double
    public var standardDeviationMilliseconds: Double
    public var minimumMilliseconds: Double
    public var p50Milliseconds: Double
    public var p90Milliseconds: Double
    public var p99Milliseconds: Double
    public var maximumMilliseconds: Double

    enum CodingKeys: String, CodingKey {
        case count
        case meanMilliseconds = "mean_ms"
        case standardDeviationMilliseconds = "std_ms"
        case minimumMilliseconds = "min_ms"
        case p50Milliseconds = "p50_ms"
        case p90Milliseconds = "p90_ms"
        case p99Milliseconds = "p99_ms"
        case maximumMilliseconds = "max_ms"
    }

    public init(
        count: Int, meanMilliseconds: Double, standardDeviationMilliseconds: Double,
        minimumMilliseconds: Double, p50Milliseconds: Double, p90Milliseconds: Double,
        p99Milliseconds: Double, maximumMilliseconds: Double
    ) {
        self.count = count
        self.meanMilliseconds = meanMilliseconds
        self.standardDeviationMilliseconds = standardDeviationMilliseconds
        self.minimumMilliseconds = minimumMilliseconds
        self.p50Milliseconds = p50Milliseconds
        self.p90Milliseconds = p90Milliseconds
        self.p99Milliseconds = p99Milliseconds
        self.maximumMilliseconds = maximumMilliseconds
    }
}

// schema: #/$defs/batch_result
public struct BatchResult: Codable, Equatable, Sendable {
    public var batchSize: Int
    public var iterations: Int?
    public var meanBatchMilliseconds: Double?
    public var imagesPerSecond: Double?
    public var error: String?

    enum CodingKeys: String, CodingKey {
        case batchSize = "batch_size"
        case iterations
        case meanBatchMilliseconds = "mean_batch_ms"
        case imagesPerSecond = "images_per_s"
        case error
    }

    /// A measured batch size: `batchMilliseconds` holds one time per batch call.
    public init?(batchSize: Int, batchMilliseconds: [Double]) {
        guard let average = Statistics.mean(batchMilliseconds), average > 0 else { return nil }
        self.batchSize = batchSize
        self.iterations = batchMilliseconds.count
        self.meanBatchMilliseconds = average
        self.imagesPerSecond = Double(batchSize) * 1000 / average
    }

    /// A batch size that could not be measured.
    public init(batchSize: Int, error: String) {
        self.batchSize = batchSize
        self.error = error
    }
}

// schema: #/$defs/device
public enum DeviceName: String, Codable, Sendable {
    case cpu, gpu, ane, unknown
}

// schema: #/$defs/plan_op
public struct PlanOperation: Codable, Equatable, Sendable {
    public var output: String
    public var operatorName: String
    public var device: DeviceName
    public var supported: [DeviceName]?

    enum CodingKeys: String, CodingKey {
        case output
        case operatorName = "operator"
        case device
        case supported
    }

    public init(output: String, operatorName: String, device: DeviceName, supported: [DeviceName]?) {
        self.output = output
        self.operatorName = operatorName
        self.device = device
        self.supported = supported
    }
}

// schema: #/$defs/compute_plan/properties/ops_by_device
public struct DeviceCounts: Codable, Equatable, Sendable {
    public var cpu = 0
    public var gpu = 0
    public var ane = 0
    public var unknown = 0

    enum CodingKeys: String, CodingKey {
        case cpu
        case gpu
        case ane
        case unknown
    }

    public init() {}

    public mutating func count(_ device: DeviceName) {
        switch device {
        case .cpu: cpu += 1
        case .gpu: gpu += 1
        case .ane: ane += 1
        case .unknown: unknown += 1
        }
    }

    public var total: Int { cpu + gpu + ane + unknown }
}

// schema: #/$defs/compute_plan
public struct ComputePlanSummary: Codable, Equatable, Sendable {
    public var opCount: Int
    public var opsByDevice: DeviceCounts
    public var opsNotOnNeuralEngine: [PlanOperation]?

    enum CodingKeys: String, CodingKey {
        case opCount = "op_count"
        case opsByDevice = "ops_by_device"
        case opsNotOnNeuralEngine = "ops_not_on_ane"
    }

    /// Counts `operations` by preferred device; lists those off the Neural Engine only
    /// when the setting allowed it (otherwise every op would be listed).
    public init(operations: [PlanOperation], listOpsOffNeuralEngine: Bool) {
        var counts = DeviceCounts()
        operations.forEach { counts.count($0.device) }
        self.opCount = operations.count
        self.opsByDevice = counts
        self.opsNotOnNeuralEngine =
            listOpsOffNeuralEngine ? operations.filter { $0.device != .ane } : nil
    }
}

// schema: #/$defs/output_comparison
public struct OutputComparison: Codable, Equatable, Sendable {
    public var output: String
    public var elements: Int
    public var maxAbsDiff: Double
    public var baselineMaxAbs: Double
    public var top1Agreement: Double?

    enum CodingKeys: String, CodingKey {
        case output
        case elements
        case maxAbsDiff = "max_abs_diff"
        case baselineMaxAbs = "baseline_max_abs"
        case top1Agreement = "top1_agreement"
    }

    public init(output: String, elements: Int, maxAbsDiff: Double, baselineMaxAbs: Double, top1Agreement: Double?) {
        self.output = output
        self.elements = elements
        self.maxAbsDiff = maxAbsDiff
        self.baselineMaxAbs = baselineMaxAbs
        self.top1Agreement = top1Agreement
    }
}

// schema: #/$defs/agreement/properties/baseline
public enum AgreementBaseline: String, Codable, Sendable {
    case cpu, reference
}

// schema: #/$defs/agreement
public struct Agreement: Codable, Equatable, Sendable {
    public var baseline: AgreementBaseline
    public var examples: Int
    public var outputs: [OutputComparison]

    enum CodingKeys: String, CodingKey {
        case baseline
        case examples
        case outputs
    }

    public init(baseline: AgreementBaseline, examples: Int, outputs: [OutputComparison]) {
        self.baseline = baseline
        self.examples = examples
        self.outputs = outputs
    }
}

// schema: #/$defs/unit_result
public struct UnitResult: Codable, Equatable, Sendable {
    public var computeUnits: ComputeUnitsChoice
    public var error: String?
    public var load: LoadTimes?
    public var firstPredictionMilliseconds: Double?
    public var latency: Latency?
    public var throughputImagesPerSecond: Double?
    public var batches: [BatchResult]?
    public var computePlan: ComputePlanSummary?
    public var agreementWithCPU: Agreement?
    public var agreementWithReference: Agreement?

    enum CodingKeys: String, CodingKey {
        case computeUnits = "compute_units"
        case error
        case load
        case firstPredictionMilliseconds = "first_prediction_ms"
        case latency
        case throughputImagesPerSecond = "throughput_images_per_s"
        case batches
        case computePlan = "compute_plan"
        case agreementWithCPU = "agreement_with_cpu"
        case agreementWithReference = "agreement_with_reference"
    }

    /// A measured unit; agreement is filled in once every unit has run.
    public init(
        computeUnits: ComputeUnitsChoice, load: LoadTimes, firstPredictionMilliseconds: Double,
        latency: Latency, batches: [BatchResult], computePlan: ComputePlanSummary?
    ) {
        self.computeUnits = computeUnits
        self.load = load
        self.firstPredictionMilliseconds = firstPredictionMilliseconds
        self.latency = latency
        self.throughputImagesPerSecond = latency.imagesPerSecond
        self.batches = batches
        self.computePlan = computePlan
    }

    /// A unit that could not be measured.
    public init(computeUnits: ComputeUnitsChoice, error: String) {
        self.computeUnits = computeUnits
        self.error = error
    }
}
