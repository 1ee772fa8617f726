import XCTest

@testable import BenchCore

final class ArgumentParserTests: XCTestCase {
    func testDefaults() throws {
        let options = try ArgumentParser.parse(["model.mlpackage", "--json", "out.json"])
        XCTAssertEqual(options.modelPath, "model.mlpackage")
        XCTAssertEqual(options.jsonPath, "out.json")
        XCTAssertEqual(options.computeUnits, [.cpu, .gpu, .ane, .all])
        XCTAssertEqual(options.warmup, 20)
        XCTAssertEqual(options.iterations, 200)
        XCTAssertEqual(options.batchSizes, [1, 8])
        XCTAssertEqual(options.imagePaths, [])
        XCTAssertNil(options.referencePath)
    }

    func testEveryOption() throws {
        let options = try ArgumentParser.parse([
            "--compute-units", "ane, cpu,ane", "--warmup=5", "--iterations", "50",
            "--batch", "1,4,16", "--image", "a.jpg", "b.png", "--reference", "ref.json",
            "m.mlpackage", "--json", "r.json", "--image=c.jpg",
        ])
        XCTAssertEqual(options.computeUnits, [.ane, .cpu])
        XCTAssertEqual(options.warmup, 5)
        XCTAssertEqual(options.iterations, 50)
        XCTAssertEqual(options.batchSizes, [1, 4, 16])
        XCTAssertEqual(options.imagePaths, ["a.jpg", "b.png", "c.jpg"])
        XCTAssertEqual(options.referencePath, "ref.json")
        XCTAssertEqual(options.modelPath, "m.mlpackage")
    }

    func testErrors() {
        assertError(["--json", "o.json"], .missingModel)
        assertError(["m.mlpackage"], .missingJSONPath)
        assertError(["m", "n", "--json", "o"], .extraPositional("n"))
        assertError(["m", "--json", "o", "--fast"], .unknownOption("--fast"))
        assertError(["m", "--json", "--warmup", "3"], .missingValue(option: "--json"))
        assertError(["m", "--json", "o", "--warmup"], .missingValue(option: "--warmup"))
        assertError(["m", "--json", "o", "--warmup", "x"], .notAnInteger(option: "--warmup", value: "x"))
        assertError(["m", "--json", "o", "--iterations", "0"], .outOfRange(option: "--iterations", value: 0, minimum: 1))
        assertError(["m", "--json", "o", "--compute-units", "npu"], .unknownComputeUnits("npu"))
        assertError(["m", "--json", "o", "--batch", ","], .emptyList(option: "--batch"))
        assertError(["m", "--json", "o", "--image", "--warmup", "1"], .missingValue(option: "--image"))
        assertError(["--help"], .helpRequested)
    }

    func testErrorMessagesNameTheOption() {
        let message = ArgumentError.notAnInteger(option: "--warmup", value: "x").description
        XCTAssertTrue(message.contains("--warmup"))
        XCTAssertTrue(ArgumentError.unknownComputeUnits("npu").description.contains("cpu, gpu, ane, all"))
    }

    private func assertError(_ arguments: [String], _ expected: ArgumentError, line: UInt = #line) {
        XCTAssertThrowsError(try ArgumentParser.parse(arguments), line: line) { error in
            XCTAssertEqual(error as? ArgumentError, expected, line: line)
        }
    }
}
