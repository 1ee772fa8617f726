// The measurement: compile once, then for each compute-unit setting load (cold, warm),
// predict once, warm up, time single predictions and batches, read the compute plan and
// the outputs of every example. Raw numbers only; Rust computes the rest.
#if canImport(CoreML)
import CoreML
import Foundation

/// Milliseconds on the monotonic clock.
func timed<T>(_ body: () throws -> T) rethrows -> (T, Double) {
    let start = DispatchTime.now().uptimeNanoseconds
    let result = try body()
    return (result, Double(DispatchTime.now().uptimeNanoseconds - start) / 1e6)
}

struct BenchmarkRun {
    let options: Options

    func run() async throws -> RawRun {
        let thermalAtStart = Machine.thermalState()
        let createdAt = ISO8601DateFormatter().string(from: Date())
        let package = URL(fileURLWithPath: options.model)
        guard FileManager.default.fileExists(atPath: package.path) else {
            throw UsageError(description: "no model at \(options.model)")
        }
        let reference = try options.reference.map {
            try JSONDecoder().decode(ReferenceFile.self, from: Data(contentsOf: URL(fileURLWithPath: $0)))
        }
        let start = DispatchTime.now().uptimeNanoseconds
        let compiled = try await MLModel.compileModel(at: package)
        let compileMilliseconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e6
        // The compiled copy lives in a temporary folder: leave nothing behind.
        defer { try? FileManager.default.removeItem(at: compiled) }

        // Inputs come from the first model that loads: its description says what it takes.
        var inputs: Inputs?
        var described: MLModelDescription?
        var units: [RawUnit] = []
        for choice in options.units {
            do {
                let unit = UnitRun(choice: choice, compiled: compiled, options: options)
                units.append(try await unit.measure { model in
                    if let inputs { return inputs }
                    let made = try Inputs(for: model, options: options, reference: reference)
                    (inputs, described) = (made, model.modelDescription)
                    return made
                })
            } catch {
                units.append(RawUnit(computeUnits: choice, error: "\(error)"))
            }
        }
        return RawRun(
            tool: ToolInfo(),
            createdAt: createdAt,
            machine: Machine.info(thermalStateAtStart: thermalAtStart),
            model: Machine.modelInfo(path: options.model, description: described, compileMilliseconds: compileMilliseconds),
            settings: Settings(
                computeUnits: options.units, warmup: options.warmup, iterations: options.iterations,
                batchSizes: options.batches, inputSource: inputs?.source ?? .synthetic,
                images: options.images.isEmpty ? nil : options.images, reference: options.reference,
                examples: max(1, inputs?.examples.count ?? 1)),
            units: units
        )
    }
}

struct UnitRun {
    let choice: ComputeUnitsChoice
    let compiled: URL
    let options: Options

    var configuration: MLModelConfiguration {
        let configuration = MLModelConfiguration()
        switch choice {
        case .cpu: configuration.computeUnits = .cpuOnly
        case .gpu: configuration.computeUnits = .cpuAndGPU
        case .ane: configuration.computeUnits = .cpuAndNeuralEngine
        case .all: configuration.computeUnits = .all
        }
        return configuration
    }

    func measure(inputsFor makeInputs: (MLModel) throws -> Inputs) async throws -> RawUnit {
        // Cold: the first load with this configuration (Core ML specialises the model for
        // the device here). Warm: the same load again, caches filled.
        let (coldModel, cold) = try timed { try MLModel(contentsOf: compiled, configuration: configuration) }
        let (model, warm) = try timed { try MLModel(contentsOf: compiled, configuration: configuration) }
        let inputs = try makeInputs(coldModel)
        let (_, first) = try timed { try model.prediction(from: inputs.example(0)) }
        var latencies: [Double] = []
        // One autorelease pool per prediction: Core ML's output buffers would otherwise
        // pile up until the loop ends and skew the later samples.
        for iteration in 0..<(options.warmup + options.iterations) {
            try autoreleasepool {
                let (_, ms) = try timed { try model.prediction(from: inputs.example(iteration)) }
                if iteration >= options.warmup { latencies.append(ms) }
            }
        }
        let batches = options.batches.map { batch(model, inputs: inputs, size: $0) }
        var unit = RawUnit(
            computeUnits: choice, load: LoadTimes(coldMilliseconds: cold, warmMilliseconds: warm),
            firstPredictionMilliseconds: first, latenciesMilliseconds: latencies, batches: batches,
            outputs: try inputs.examples.map { try Outputs.read(model.prediction(from: $0)) })
        do {
            unit.computePlan = try await Plan.read(compiled: compiled, configuration: configuration)
        } catch {
            unit.computePlanError = "\(error)"
        }
        return unit
    }

    /// predictions(fromBatch:) of one size: one untimed call, then calls adding up to about
    /// --iterations images. A failure is this size's alone (large batches can run out of
    /// memory where small ones do not).
    func batch(_ model: MLModel, inputs: Inputs, size: Int) -> RawBatch {
        // A package exported with this batch size (enumerated shapes) takes the batch as
        // one stacked input: that is the call an app makes, so that is what is timed.
        if let stacked = try? inputs.stacked(for: model, size: size) {
            do {
                _ = try model.prediction(from: stacked)
                var calls: [Double] = []
                for _ in 0..<max(3, options.iterations / size) {
                    try autoreleasepool {
                        calls.append(try timed { try model.prediction(from: stacked) }.1)
                    }
                }
                return RawBatch(batchSize: size, callsMilliseconds: calls, stacked: true)
            } catch {
                return RawBatch(batchSize: size, stacked: true, error: "\(error)")
            }
        }
        let provider = MLArrayBatchProvider(array: (0..<size).map { inputs.example($0) })
        do {
            _ = try model.predictions(fromBatch: provider)
            var calls: [Double] = []
            for _ in 0..<max(3, options.iterations / size) {
                try autoreleasepool {
                    calls.append(try timed { try model.predictions(fromBatch: provider) }.1)
                }
            }
            return RawBatch(batchSize: size, callsMilliseconds: calls)
        } catch {
            return RawBatch(batchSize: size, error: "\(error)")
        }
    }
}

/// A prediction's outputs as the raw schema records them.
enum Outputs {
    static func read(_ provider: MLFeatureProvider) -> [String: OutputValue] {
        var values: [String: OutputValue] = [:]
        for name in provider.featureNames {
            guard let value = provider.featureValue(for: name) else { continue }
            switch value.type {
            case .multiArray:
                // MLShapedArray reads any element type and any strides in row-major order.
                guard let array = value.multiArrayValue else { continue }
                values[name] = OutputValue(
                    kind: .multiarray, shape: array.shape.map(\.intValue),
                    data: MLShapedArray<Float>(converting: array).scalars)
            case .dictionary:
                let pairs = value.dictionaryValue.map { ("\($0.key)", $0.value.floatValue) }
                values[name] = OutputValue(kind: .dictionary, data: pairs.map(\.1), labels: pairs.map(\.0))
            case .string:
                values[name] = OutputValue(kind: .string, string: value.stringValue)
            case .double:
                values[name] = OutputValue(kind: .number, data: [Float(value.doubleValue)])
            case .int64:
                values[name] = OutputValue(kind: .number, data: [Float(value.int64Value)])
            default:
                continue
            }
        }
        return values
    }
}
#endif
