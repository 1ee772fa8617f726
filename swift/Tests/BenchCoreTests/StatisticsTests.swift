import XCTest

@testable import BenchCore

final class StatisticsTests: XCTestCase {
    func testPercentilesInterpolateBetweenClosestRanks() throws {
        let samples: [Double] = [4, 1, 3, 2, 5]
        XCTAssertEqual(Statistics.percentile(0, of: samples), 1)
        XCTAssertEqual(Statistics.percentile(0.5, of: samples), 3)
        XCTAssertEqual(Statistics.percentile(1, of: samples), 5)
        // Position (5 - 1) * 0.9 = 3.6: 4 + 0.6 * (5 - 4).
        XCTAssertEqual(try XCTUnwrap(Statistics.percentile(0.9, of: samples)), 4.6, accuracy: 1e-12)
        // Even count: the median is the midpoint of the middle two.
        XCTAssertEqual(Statistics.percentile(0.5, of: [1, 2, 3, 4]), 2.5)
    }

    func testOneSampleIsEveryPercentile() {
        XCTAssertEqual(Statistics.percentile(0.99, of: [7]), 7)
        XCTAssertEqual(Statistics.standardDeviation([7]), 0)
    }

    func testNoSamplesOrBadFractionGiveNil() {
        XCTAssertNil(Statistics.percentile(0.5, of: []))
        XCTAssertNil(Statistics.percentile(1.5, of: [1, 2]))
        XCTAssertNil(Statistics.mean([]))
        XCTAssertNil(Latency(millisecondSamples: []))
    }

    func testSampleStandardDeviationDividesByNMinusOne() throws {
        // Mean 5, squared deviations sum to 32, / 7 -> sqrt(32 / 7).
        let spread = try XCTUnwrap(Statistics.standardDeviation([2, 4, 4, 4, 5, 5, 7, 9]))
        XCTAssertEqual(spread, (32.0 / 7).squareRoot(), accuracy: 1e-12)
    }

    func testLatencySummary() throws {
        let latency = try XCTUnwrap(Latency(millisecondSamples: (1...100).map(Double.init).reversed()))
        XCTAssertEqual(latency.count, 100)
        XCTAssertEqual(latency.minimumMilliseconds, 1)
        XCTAssertEqual(latency.maximumMilliseconds, 100)
        XCTAssertEqual(latency.meanMilliseconds, 50.5)
        XCTAssertEqual(latency.p50Milliseconds, 50.5, accuracy: 1e-9)
        XCTAssertEqual(latency.p90Milliseconds, 90.1, accuracy: 1e-9)
        XCTAssertEqual(latency.p99Milliseconds, 99.01, accuracy: 1e-9)
        XCTAssertEqual(latency.imagesPerSecond, 1000 / 50.5, accuracy: 1e-9)
    }

    func testBatchThroughput() throws {
        let batch = try XCTUnwrap(BatchResult(batchSize: 8, batchMilliseconds: [20, 20, 20]))
        XCTAssertEqual(batch.iterations, 3)
        XCTAssertEqual(batch.meanBatchMilliseconds, 20)
        XCTAssertEqual(try XCTUnwrap(batch.imagesPerSecond), 400, accuracy: 1e-9)
        XCTAssertNil(BatchResult(batchSize: 8, batchMilliseconds: []))
    }
}
