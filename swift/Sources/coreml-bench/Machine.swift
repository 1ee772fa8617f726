// Facts about the machine and the model that explain a run's numbers.
#if canImport(CoreML)
import CoreML
import Foundation

enum Machine {
    static func thermalState() -> ThermalStateName {
        switch ProcessInfo.processInfo.thermalState {
        case .nominal: return .nominal
        case .fair: return .fair
        case .serious: return .serious
        case .critical: return .critical
        @unknown default: return .unknown
        }
    }

    /// Called at the end of a run: the thermal state now is the run's end state.
    static func info(thermalStateAtStart: ThermalStateName) -> MachineInfo {
        let process = ProcessInfo.processInfo
        return MachineInfo(
            chip: sysctl("machdep.cpu.brand_string") ?? "unknown", hardwareModel: sysctl("hw.model"),
            osVersion: process.operatingSystemVersionString, processorCount: process.processorCount,
            memoryBytes: Int(exactly: process.physicalMemory),
            thermalStateStart: thermalStateAtStart, thermalStateEnd: thermalState())
    }

    static func sysctl(_ name: String) -> String? {
        var size = 0
        guard sysctlbyname(name, nil, &size, nil, 0) == 0, size > 0 else { return nil }
        var buffer = [CChar](repeating: 0, count: size)
        guard sysctlbyname(name, &buffer, &size, nil, 0) == 0 else { return nil }
        return String(cString: buffer)
    }

    /// The model's interface and metadata; empty when no setting could load it.
    static func modelInfo(path: String, description: MLModelDescription?, compileMilliseconds: Double) -> ModelInfo {
        func features(_ byName: [String: MLFeatureDescription]?) -> [FeatureInfo] {
            (byName ?? [:]).values.sorted { $0.name < $1.name }.map(feature)
        }
        return ModelInfo(
            path: path, inputs: features(description?.inputDescriptionsByName),
            outputs: features(description?.outputDescriptionsByName),
            metadata: description?.metadata[.creatorDefinedKey] as? [String: String] ?? [:],
            compileMilliseconds: compileMilliseconds)
    }

    static func feature(_ d: MLFeatureDescription) -> FeatureInfo {
        switch d.type {
        case .image:
            return FeatureInfo(name: d.name, kind: .image, shape: d.imageConstraint.map { [1, 3, $0.pixelsHigh, $0.pixelsWide] })
        case .multiArray:
            let c = d.multiArrayConstraint
            let types: [MLMultiArrayDataType: String] = [.float16: "float16", .float32: "float32", .double: "float64", .int32: "int32"]
            return FeatureInfo(name: d.name, kind: .multiarray, shape: c?.shape.map(\.intValue), dataType: c.map { types[$0.dataType] ?? "other" })
        case .dictionary: return FeatureInfo(name: d.name, kind: .dictionary)
        case .string: return FeatureInfo(name: d.name, kind: .string)
        case .int64: return FeatureInfo(name: d.name, kind: .int64)
        case .double: return FeatureInfo(name: d.name, kind: .double)
        default: return FeatureInfo(name: d.name, kind: .other)
        }
    }
}
#endif
