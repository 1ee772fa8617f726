import Foundation
import XCTest

@testable import BenchCore

final class ReportTests: XCTestCase {
    private func sampleReport() throws -> BenchReport {
        var options = BenchOptions(modelPath: "runs/m.mlpackage", jsonPath: "r.json")
        options.computeUnits = [.cpu, .ane]
        let latency = try XCTUnwrap(Latency(millisecondSamples: [3, 1, 2]))
        let batch = try XCTUnwrap(BatchResult(batchSize: 8, batchMilliseconds: [10]))
        var cpu = UnitResult(
            computeUnits: .cpu,
            load: LoadTimes(coldMilliseconds: 100, warmMilliseconds: 10),
            firstPredictionMilliseconds: 5,
            latency: latency,
            batches: [batch],
            computePlan: ComputePlanSummary(
                operations: [PlanOperation(output: "x", operatorName: "matmul", device: .cpu, supported: [.cpu])],
                listOpsOffNeuralEngine: false)
        )
        cpu.agreementWithReference = Agreement(
            baseline: .reference, examples: 1,
            outputs: [OutputComparison(output: "logits", elements: 4, maxAbsDiff: 0.5, baselineMaxAbs: 2, top1Agreement: 1)])
        return BenchReport(
            tool: ToolInfo(),
            createdAt: "2025-01-02T03:04:05Z",
            machine: MachineInfo(chip: "Apple M1", osVersion: "14.5", thermalStateStart: .nominal, thermalStateEnd: .fair),
            model: ModelInfo(
                path: "runs/m.mlpackage",
                inputs: [FeatureInfo(name: "image", kind: .image, shape: [1, 3, 224, 224])],
                outputs: [FeatureInfo(name: "logits", kind: .multiarray, shape: [1, 4], dataType: "float16")],
                metadata: ["precision": "fp16"], compileMilliseconds: 12.5),
            settings: BenchSettings(options: options, inputSource: .synthetic, examples: 1),
            units: [cpu, UnitResult(computeUnits: .ane, error: "no Neural Engine")]
        )
    }

    func testRoundTripAndSnakeCaseKeys() throws {
        let report = try sampleReport()
        let data = try ReportEncoding.encode(report)
        let text = try XCTUnwrap(String(data: data, encoding: .utf8))
        for key in ["\"schema_version\" : 1", "\"compile_ms\"", "\"throughput_images_per_s\"", "\"p99_ms\"",
                    "\"ops_by_device\"", "\"agreement_with_reference\"", "\"thermal_state_end\" : \"fair\""] {
            XCTAssertTrue(text.contains(key), "missing \(key)")
        }
        // Slashes unescaped, nil optionals left out (the schema does not allow null).
        XCTAssertTrue(text.contains("runs/m.mlpackage"))
        XCTAssertFalse(text.contains("null"))
        XCTAssertFalse(text.contains("hardware_model"))
        XCTAssertEqual(try ReportEncoding.decode(data), report)
    }

    func testKeysAreSorted() throws {
        let text = try XCTUnwrap(String(data: ReportEncoding.encode(try sampleReport()), encoding: .utf8))
        let topLevel = ["created_at", "machine", "model", "schema_version", "settings", "tool", "units"]
        let positions = try topLevel.map { key in
            try XCTUnwrap(text.range(of: "\n  \"\(key)\"")?.lowerBound, key)
        }
        XCTAssertEqual(positions, positions.sorted())
    }

    func testOtherSchemaVersionIsRejected() throws {
        var object = try XCTUnwrap(
            JSONSerialization.jsonObject(with: ReportEncoding.encode(try sampleReport())) as? [String: Any])
        object["schema_version"] = 2
        let data = try JSONSerialization.data(withJSONObject: object)
        XCTAssertThrowsError(try ReportEncoding.decode(data)) { error in
            XCTAssertEqual(error as? ReportVersionError, ReportVersionError(found: 2))
        }
    }

    func testComputePlanListsOpsOffTheNeuralEngineOnlyWhenAsked() {
        let operations = [
            PlanOperation(output: "a", operatorName: "conv", device: .ane, supported: nil),
            PlanOperation(output: "b", operatorName: "softmax", device: .gpu, supported: nil),
        ]
        let withList = ComputePlanSummary(operations: operations, listOpsOffNeuralEngine: true)
        XCTAssertEqual(withList.opCount, 2)
        XCTAssertEqual(withList.opsByDevice.ane, 1)
        XCTAssertEqual(withList.opsByDevice.gpu, 1)
        XCTAssertEqual(withList.opsNotOnNeuralEngine?.map(\.output), ["b"])
        XCTAssertNil(ComputePlanSummary(operations: operations, listOpsOffNeuralEngine: false).opsNotOnNeuralEngine)
    }

    func testRunSummaryFormatting() {
        XCTAssertEqual(RunSummary.format(3.14159), "3.14")
        XCTAssertEqual(RunSummary.format(2.006), "2.01")
        XCTAssertEqual(RunSummary.format(10), "10.00")
    }
}
