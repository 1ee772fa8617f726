// Where Core ML plans to run each op (MLComputePlan, macOS 14.4+).
#if canImport(CoreML)
import BenchCore
import CoreML
import Foundation

@available(macOS 14.4, *)
enum ComputePlanReader {
    /// Nil for models that are not ML programs (no per-op plan to read).
    static func summary(
        compiledURL: URL, configuration: MLModelConfiguration, listOpsOffNeuralEngine: Bool
    ) async throws -> ComputePlanSummary? {
        let plan = try await MLComputePlan.load(contentsOf: compiledURL, configuration: configuration)
        guard case let .program(program) = plan.modelStructure, let main = program.functions["main"] else {
            return nil
        }
        let operations = planOperations(in: main.block, plan: plan)
        return ComputePlanSummary(operations: operations, listOpsOffNeuralEngine: listOpsOffNeuralEngine)
    }

    /// The block's ops and those of nested blocks, without `const` ops: they only hold
    /// weights, cost nothing to run, and would drown the list of ops off the Neural Engine.
    private static func planOperations(
        in block: MLModelStructure.Program.Block, plan: MLComputePlan
    ) -> [PlanOperation] {
        var operations: [PlanOperation] = []
        for operation in block.operations {
            if operation.operatorName != "const" {
                let usage = plan.deviceUsage(for: operation)
                operations.append(
                    PlanOperation(
                        output: operation.outputs.first?.name ?? "",
                        operatorName: operation.operatorName,
                        device: usage.map { DeviceName($0.preferred) } ?? .unknown,
                        supported: usage.map { $0.supported.map(DeviceName.init) }
                    ))
            }
            for nested in operation.blocks {
                operations += planOperations(in: nested, plan: plan)
            }
        }
        return operations
    }
}

extension DeviceName {
    init(_ device: MLComputeDevice) {
        switch device {
        case .cpu: self = .cpu
        case .gpu: self = .gpu
        case .neuralEngine: self = .ane
        @unknown default: self = .unknown
        }
    }
}
#endif
