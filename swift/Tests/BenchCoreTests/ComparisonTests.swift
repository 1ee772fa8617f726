import Foundation
import XCTest

@testable import BenchCore

final class ComparisonTests: XCTestCase {
    func testMaxAbsDiffAndTop1() throws {
        let comparison = try OutputComparer.compare(
            output: "logits",
            candidate: [[0.1, 0.9, 0.0], [0.6, 0.5, 0.0]],
            baseline: [[0.0, 1.0, 0.0], [0.4, 0.5, 0.0]]
        )
        XCTAssertEqual(comparison.elements, 6)
        XCTAssertEqual(comparison.maxAbsDiff, 0.2, accuracy: 1e-6)
        XCTAssertEqual(comparison.baselineMaxAbs, 1.0, accuracy: 1e-6)
        XCTAssertEqual(comparison.top1Agreement, 0.5)
    }

    func testEmbeddingsHaveNoTop1() throws {
        let comparison = try OutputComparer.compare(output: "embedding", candidate: [[1, 2]], baseline: [[1, 2]])
        XCTAssertEqual(comparison.maxAbsDiff, 0)
        XCTAssertNil(comparison.top1Agreement)
    }

    func testMismatchedSizesAreErrors() {
        XCTAssertThrowsError(try OutputComparer.compare(output: "logits", candidate: [[1]], baseline: [[1, 2]])) {
            XCTAssertEqual(
                $0 as? ComparisonError,
                .elementCountMismatch(output: "logits", example: 0, candidate: 1, baseline: 2))
        }
        XCTAssertThrowsError(try OutputComparer.compare(output: "logits", candidate: [], baseline: [[1]]))
    }

    func testAgreementComparesSharedOutputsInNameOrder() throws {
        let agreement = try OutputComparer.compare(
            candidate: [["tokens": [1, 2], "embedding": [3], "extra": [0]]],
            baseline: [["embedding": [3.5], "tokens": [1, 2]]],
            baselineName: .cpu
        )
        XCTAssertEqual(agreement.outputs.map(\.output), ["embedding", "tokens"])
        XCTAssertEqual(agreement.examples, 1)
    }

    func testArgmaxIgnoresNaN() {
        XCTAssertEqual(OutputComparer.argmax([.nan, 1, 3, 3]), 2)
        XCTAssertNil(OutputComparer.argmax([]))
    }

    func testSyntheticInputIsDeterministic() {
        let first = SyntheticInput.normalisedPixels(count: 1000)
        XCTAssertEqual(first, SyntheticInput.normalisedPixels(count: 1000))
        XCTAssertTrue(first.allSatisfy { $0 >= -2 && $0 < 2 })
        XCTAssertNotEqual(first, SyntheticInput.normalisedPixels(count: 1000, seed: 1))
        XCTAssertEqual(SyntheticInput.rgbBytes(width: 4, height: 2).count, 24)
    }

    func testReferenceFileValidationAndClassOrder() throws {
        let json = """
            {"format": "coreml-bench-reference", "version": 1,
             "inputs": {"pixel_values": {"shape": [2, 1], "data": [0, 1]}},
             "outputs": {"classLabel_probs": {"shape": [2, 3], "data": [0.1, 0.2, 0.7, 0.5, 0.3, 0.2]}},
             "class_labels": ["zebra", "ant", "cat"]}
            """
        let file = try JSONDecoder().decode(ReferenceFile.self, from: Data(json.utf8))
        try file.validate()
        XCTAssertEqual(file.examples, 2)
        // Reordered to label order: ant, cat, zebra.
        XCTAssertEqual(file.expectedOutputs()[0]["classLabel_probs"], [0.2, 0.7, 0.1])

        var broken = file
        broken.outputs["logits"] = ReferenceTensor(shape: [3, 2], data: [0, 0, 0, 0, 0, 0])
        XCTAssertThrowsError(try broken.validate()) {
            XCTAssertEqual($0 as? ReferenceFileError, .exampleCountMismatch(name: "logits", found: 3, expected: 2))
        }
        broken = file
        broken.inputs["pixel_values"] = ReferenceTensor(shape: [2, 2], data: [0])
        XCTAssertThrowsError(try broken.validate())
    }
}
