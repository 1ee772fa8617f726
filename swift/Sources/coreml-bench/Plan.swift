// Where Core ML plans to run each op (MLComputePlan, macOS 14.4+): preferred and
// supported devices and the estimated cost share. Rust summarises it.
#if canImport(CoreML)
import CoreML
import Foundation

enum Plan {
    static func read(compiled: URL, configuration: MLModelConfiguration) async throws -> ComputePlan {
        guard #available(macOS 14.4, *) else {
            throw UsageError(description: "MLComputePlan needs macOS 14.4 (this is \(ProcessInfo.processInfo.operatingSystemVersionString))")
        }
        let plan = try await MLComputePlan.load(contentsOf: compiled, configuration: configuration)
        guard case let .program(program) = plan.modelStructure, let main = program.functions["main"] else {
            throw UsageError(description: "not an ML program: no per-op plan")
        }
        return ComputePlan(ops: operations(in: main.block, plan: plan))
    }

    /// The block's ops and those of nested blocks, without `const` ops: they only hold
    /// weights and cost nothing to run.
    @available(macOS 14.4, *)
    static func operations(in block: MLModelStructure.Program.Block, plan: MLComputePlan) -> [PlanOp] {
        var ops: [PlanOp] = []
        for operation in block.operations {
            if operation.operatorName != "const" {
                let usage = plan.deviceUsage(for: operation)
                ops.append(PlanOp(
                    output: operation.outputs.first?.name ?? "",
                    operatorName: operation.operatorName,
                    preferred: usage.map { device($0.preferred) } ?? .unknown,
                    supported: usage.map { $0.supported.map(device) },
                    cost: plan.estimatedCost(of: operation)?.weight))
            }
            for nested in operation.blocks {
                ops += operations(in: nested, plan: plan)
            }
        }
        return ops
    }

    @available(macOS 14.4, *)
    static func device(_ device: MLComputeDevice) -> DeviceName {
        switch device {
        case .cpu: return .cpu
        case .gpu: return .gpu
        case .neuralEngine: return .ane
        @unknown default: return .unknown
        }
    }
}
#endif
