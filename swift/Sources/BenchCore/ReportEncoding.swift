// JSON in and out. Keys are sorted so two reports diff cleanly and the output does not
// depend on dictionary order; slashes are left alone so paths stay readable.
import Foundation

public enum ReportEncoding {
    public static func encoder() -> JSONEncoder {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        // NaN or infinity in a report is a bug upstream; the default strategy throws,
        // which is what we want rather than writing JSON the schema rejects.
        return encoder
    }

    public static func encode(_ report: BenchReport) throws -> Data {
        var data = try encoder().encode(report)
        data.append(0x0A)  // a final newline, like any text file
        return data
    }

    /// Writes the report atomically, so a reader never sees half a file.
    public static func write(_ report: BenchReport, to url: URL) throws {
        try encode(report).write(to: url, options: .atomic)
    }

    /// Reads a report, refusing other schema versions before decoding the rest so the
    /// error names the version rather than some field that moved.
    public static func decode(_ data: Data) throws -> BenchReport {
        let header = try JSONDecoder().decode(VersionHeader.self, from: data)
        guard header.schemaVersion == benchReportSchemaVersion else {
            throw ReportVersionError(found: header.schemaVersion)
        }
        return try JSONDecoder().decode(BenchReport.self, from: data)
    }

    /// UTC time stamp in the schema's date-time format, e.g. 2025-03-14T09:26:53Z.
    public static func timestamp(_ date: Date = Date()) -> String {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime]
        return formatter.string(from: date)
    }
}

/// A report from another version of the schema.
public struct ReportVersionError: Error, Equatable, CustomStringConvertible {
    public var found: Int

    public var description: String {
        "report schema_version \(found) is not supported (this build reads \(benchReportSchemaVersion))"
    }
}

private struct VersionHeader: Decodable {
    var schemaVersion: Int

    enum CodingKeys: String, CodingKey {
        case schemaVersion = "schema_version"
    }
}
