// Facts about the machine that explain a report's numbers.
#if canImport(CoreML)
import BenchCore
import Foundation

enum MachineProbe {
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
    static func machineInfo(thermalStateAtStart: ThermalStateName) -> MachineInfo {
        let process = ProcessInfo.processInfo
        return MachineInfo(
            chip: sysctlString("machdep.cpu.brand_string") ?? "unknown",
            hardwareModel: sysctlString("hw.model"),
            osVersion: process.operatingSystemVersionString,
            processorCount: process.processorCount,
            memoryBytes: Int(exactly: process.physicalMemory),
            thermalStateStart: thermalStateAtStart,
            thermalStateEnd: thermalState()
        )
    }

    /// A string sysctl value: ask for its size first, then read it.
    static func sysctlString(_ name: String) -> String? {
        var size = 0
        guard sysctlbyname(name, nil, &size, nil, 0) == 0, size > 0 else { return nil }
        var buffer = [CChar](repeating: 0, count: size)
        guard sysctlbyname(name, &buffer, &size, nil, 0) == 0 else { return nil }
        return String(cString: buffer)
    }
}
#endif
