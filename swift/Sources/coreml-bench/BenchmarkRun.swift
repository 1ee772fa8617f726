// The whole measurement: compile once, then measure each compute-unit setting in turn,
// then compare their outputs.
#if canImport(CoreML)
import BenchCore
import CoreML
import Foundation

enum BenchRunError: Error, CustomStringConvertible {
    case packageNotFound(String)
    case noUnitMeasured([String])

    var description: String {
        switch self {
        case .packageNotFound(let path):
            return "no model at \(path)"
        case .noUnitMeasured(let errors):
            return "no compute-unit setting could be measured:\n  " + errors.joined(separator: "\n  ")
        }
    }
}

struct BenchmarkRun {
    let options: BenchOptions

    func run() async throws -> BenchReport {
        let thermalStateAtStart = MachineProbe.thermalState()
        let createdAt = ReportEncoding.timestamp()
        let packageURL = URL(fileURLWithPath: options.modelPath)
        guard FileManager.default.fileExists(atPath: packageURL.path) else {
            throw BenchRunError.packageNotFound(options.modelPath)
        }
        let reference = try options.referencePath.map { try ReferenceFile.load(from: URL(fileURLWithPath: $0)) }

        let compiled = try await Stopwatch.measureAsync { try await MLModel.compileModel(at: packageURL) }
        // The compiled copy lives in a temporary directory; leave nothing behind.
        defer { try? FileManager.default.removeItem(at: compiled.result) }

        var measured: [MeasuredUnit] = []
        var failures: [UnitResult] = []
        // Inputs are built from the first model that loads: its description says what
        // it takes. Building them needs no prediction, so no setting is warmed early.
        var inputs: BenchInputs?
        for choice in options.computeUnits {
            do {
                let unit = try await UnitBenchmark(
                    choice: choice, compiledURL: compiled.result, options: options
                ).measure { model in
                    if let inputs { return inputs }
                    let made = try BenchInputs.make(for: model, options: options, reference: reference)
                    inputs = made
                    return made
                }
                measured.append(unit)
            } catch {
                failures.append(UnitResult(computeUnits: choice, error: "\(error)"))
            }
        }
        guard let inputs, let described = measured.first?.description else {
            throw BenchRunError.noUnitMeasured(failures.compactMap(\.error))
        }

        let units = try compareOutputs(measured, reference: reference)
        let failedByChoice = Dictionary(uniqueKeysWithValues: failures.map { ($0.computeUnits, $0) })
        let measuredByChoice = Dictionary(uniqueKeysWithValues: units.map { ($0.computeUnits, $0) })
        // Report in command-line order, failures where they happened.
        let ordered = options.computeUnits.compactMap { measuredByChoice[$0] ?? failedByChoice[$0] }

        return BenchReport(
            tool: ToolInfo(),
            createdAt: createdAt,
            machine: MachineProbe.machineInfo(thermalStateAtStart: thermalStateAtStart),
            model: ModelDescriber.info(
                path: options.modelPath, description: described, compileMilliseconds: compiled.milliseconds),
            settings: BenchSettings(options: options, inputSource: inputs.source, examples: inputs.examples.count),
            units: ordered
        )
    }

    /// Fills in each unit's agreement with .cpuOnly and with the reference outputs.
    private func compareOutputs(_ measured: [MeasuredUnit], reference: ReferenceFile?) throws -> [UnitResult] {
        let cpuOutputs = measured.first { $0.result.computeUnits == .cpu }?.outputs
        let expected = reference?.expectedOutputs()
        return try measured.map { unit in
            var result = unit.result
            if let cpuOutputs, unit.result.computeUnits != .cpu {
                result.agreementWithCPU = try OutputComparer.compare(
                    candidate: unit.outputs, baseline: cpuOutputs, baselineName: .cpu)
            }
            if let expected {
                result.agreementWithReference = try OutputComparer.compare(
                    candidate: unit.outputs, baseline: expected, baselineName: .reference)
            }
            return result
        }
    }
}

/// What one setting produced: its measurements and its outputs for each example.
struct MeasuredUnit {
    var result: UnitResult
    var outputs: [ExampleOutputs]
    var description: MLModelDescription
}

/// Measures one compute-unit setting.
struct UnitBenchmark {
    let choice: ComputeUnitsChoice
    let compiledURL: URL
    let options: BenchOptions

    func measure(inputsFor makeInputs: (MLModel) throws -> BenchInputs) async throws -> MeasuredUnit {
        let configuration = MLModelConfiguration()
        configuration.computeUnits = choice.mlComputeUnits

        // Cold: the first load with this configuration since compiling (Core ML
        // specialises the model for the device here). Warm: the same load again.
        let cold = try Stopwatch.measure { try MLModel(contentsOf: compiledURL, configuration: configuration) }
        let warm = try Stopwatch.measure { try MLModel(contentsOf: compiledURL, configuration: configuration) }
        let model = warm.result
        let inputs = try makeInputs(cold.result)

        let first = try Stopwatch.measure { try model.prediction(from: inputs.examples[0]) }
        try warmUp(model, inputs: inputs)
        let latency = try timeSinglePredictions(model, inputs: inputs)
        let batches = options.batchSizes.map { timeBatch(model, inputs: inputs, size: $0) }
        let plan = await computePlan(configuration: configuration)
        let outputs = try inputs.examples.map { try OutputReader.values(of: model.prediction(from: $0)) }

        let result = UnitResult(
            computeUnits: choice,
            load: LoadTimes(coldMilliseconds: cold.milliseconds, warmMilliseconds: warm.milliseconds),
            firstPredictionMilliseconds: first.milliseconds,
            latency: latency,
            batches: batches,
            computePlan: plan
        )
        return MeasuredUnit(result: result, outputs: outputs, description: model.modelDescription)
    }

    private func warmUp(_ model: MLModel, inputs: BenchInputs) throws {
        for iteration in 0..<options.warmup {
            _ = try model.prediction(from: inputs.example(iteration))
        }
    }

    private func timeSinglePredictions(_ model: MLModel, inputs: BenchInputs) throws -> Latency {
        var samples: [Double] = []
        samples.reserveCapacity(options.iterations)
        for iteration in 0..<options.iterations {
            let input = inputs.example(iteration)
            samples.append(try Stopwatch.measure { try model.prediction(from: input) }.milliseconds)
        }
        guard let latency = Latency(millisecondSamples: samples) else {
            // The parser guarantees iterations >= 1, so this is a programming error.
            preconditionFailure("no latency samples with \(options.iterations) iterations")
        }
        return latency
    }

    /// Times predictions(fromBatch:) for one batch size; a failure is reported for this
    /// size alone (large batches can run out of memory where small ones do not).
    private func timeBatch(_ model: MLModel, inputs: BenchInputs, size: Int) -> BatchResult {
        let batch = MLArrayBatchProvider(array: (0..<size).map { inputs.example($0) })
        // Fewer calls for bigger batches keep the total work near --iterations images.
        let calls = max(3, options.iterations / size)
        do {
            _ = try model.predictions(fromBatch: batch)
            var samples: [Double] = []
            for _ in 0..<calls {
                samples.append(try Stopwatch.measure { try model.predictions(fromBatch: batch) }.milliseconds)
            }
            return BatchResult(batchSize: size, batchMilliseconds: samples)
                ?? BatchResult(batchSize: size, error: "batch calls took no measurable time")
        } catch {
            return BatchResult(batchSize: size, error: "\(error)")
        }
    }

    /// The compute plan when the system can tell (macOS 14.4+); nil otherwise, or when
    /// Core ML cannot plan this model (e.g. a neural network rather than an ML program).
    private func computePlan(configuration: MLModelConfiguration) async -> ComputePlanSummary? {
        guard #available(macOS 14.4, *) else { return nil }
        return try? await ComputePlanReader.summary(
            compiledURL: compiledURL,
            configuration: configuration,
            listOpsOffNeuralEngine: choice.allowsNeuralEngine
        )
    }
}

extension ComputeUnitsChoice {
    var mlComputeUnits: MLComputeUnits {
        switch self {
        case .cpu: return .cpuOnly
        case .gpu: return .cpuAndGPU
        case .ane: return .cpuAndNeuralEngine
        case .all: return .all
        }
    }
}
#endif
