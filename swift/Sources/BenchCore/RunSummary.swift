// The few lines coreml-bench prints when it finishes; the JSON report has the rest.

public enum RunSummary {
    public static func lines(for report: BenchReport) -> [String] {
        var lines = ["\(report.model.path): compiled in \(format(report.model.compileMilliseconds)) ms"]
        for unit in report.units {
            lines.append(line(for: unit))
        }
        return lines
    }

    static func line(for unit: UnitResult) -> String {
        let name = unit.computeUnits.rawValue.padding(toLength: 4)
        if let error = unit.error {
            return "\(name) failed: \(error)"
        }
        guard let latency = unit.latency else { return "\(name) no measurements" }
        var text = "\(name) p50 \(format(latency.p50Milliseconds)) ms, p90 \(format(latency.p90Milliseconds)) ms, "
        text += "\(format(latency.imagesPerSecond)) images/s"
        if let plan = unit.computePlan {
            let devices = plan.opsByDevice
            text += "; ops cpu \(devices.cpu) gpu \(devices.gpu) ane \(devices.ane)"
        }
        return text
    }

    /// Two decimals, without Foundation's String(format:).
    static func format(_ value: Double) -> String {
        let hundredths = (value * 100).rounded()
        let whole = Int(hundredths / 100)
        let fraction = Int(abs(hundredths.truncatingRemainder(dividingBy: 100)))
        let sign = value < 0 && whole == 0 ? "-" : ""
        return "\(sign)\(whole).\(fraction < 10 ? "0" : "")\(fraction)"
    }
}

extension String {
    /// Pads with spaces on the right to `length` characters.
    func padding(toLength length: Int) -> String {
        count >= length ? self : self + String(repeating: " ", count: length - count)
    }
}
