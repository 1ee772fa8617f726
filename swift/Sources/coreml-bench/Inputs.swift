// The inputs predictions run on: the reference file's, the --image files, or one
// deterministic synthetic input, shaped for what the model takes (an RGB image or a
// float multiarray, fp16 or fp32).
#if canImport(CoreML)
import CoreML
import CoreVideo
import Foundation

struct Inputs {
    var source: InputSource
    var examples: [MLFeatureProvider]

    /// Example `index`, cycling, so any number of predictions run on few inputs.
    func example(_ index: Int) -> MLFeatureProvider {
        examples[index % examples.count]
    }

    /// `size` examples stacked on the batch axis of the model's one multiArray input, when
    /// its enumerated shapes list that batch; nil otherwise.
    func stacked(for model: MLModel, size: Int) throws -> MLFeatureProvider? {
        let inputs = model.modelDescription.inputDescriptionsByName
        guard inputs.count == 1, let first = inputs.first,
              let constraint = first.value.multiArrayConstraint,
              constraint.shapeConstraint.type == .enumerated,
              let shape = constraint.shapeConstraint.enumeratedShapes.first(where: { $0.first?.intValue == size })
        else { return nil }
        let name = first.key
        let array = try MLMultiArray(shape: shape, dataType: constraint.dataType)
        let per = array.count / size
        for i in 0..<size {
            guard let one = example(i).featureValue(for: name)?.multiArrayValue, one.count == per else {
                return nil
            }
            for j in 0..<per { array[i * per + j] = one[j] }
        }
        return try MLDictionaryFeatureProvider(dictionary: [name: MLFeatureValue(multiArray: array)])
    }

    init(for model: MLModel, options: Options, reference: ReferenceFile?) throws {
        let descriptions = model.modelDescription.inputDescriptionsByName.values.sorted { $0.name < $1.name }
        func provider(_ value: (MLFeatureDescription) throws -> MLFeatureValue) throws -> MLFeatureProvider {
            var values: [String: MLFeatureValue] = [:]
            for d in descriptions { values[d.name] = try value(d) }
            return try MLDictionaryFeatureProvider(dictionary: values)
        }
        if let reference {
            let count = reference.inputs.values.first?.shape.first ?? 0
            source = .reference
            examples = try (0..<count).map { index in
                try provider { d in
                    guard let tensor = reference.inputs[d.name] else {
                        throw UsageError(description: "the reference file has no input `\(d.name)`")
                    }
                    return try Self.value(tensor.example(index), for: d)
                }
            }
        } else if !options.images.isEmpty {
            source = .images
            examples = try options.images.map { path in
                try provider { d in
                    // Core ML scales and converts the file itself for image inputs.
                    guard let constraint = d.imageConstraint else {
                        throw UsageError(description: "--image needs an image input; `\(d.name)` is not one")
                    }
                    return try MLFeatureValue(imageAt: URL(fileURLWithPath: path), constraint: constraint, options: nil)
                }
            }
        } else {
            source = .synthetic
            examples = [try provider { d in try Self.value(Self.synthetic(for: d), for: d) }]
        }
        guard !examples.isEmpty else { throw UsageError(description: "no inputs to predict on") }
    }

    /// Values for one example: 0...255 RGB planes [3, H, W] for images, row-major
    /// values for multiarrays (the batch axis is one example).
    static func value(_ values: [Float], for d: MLFeatureDescription) throws -> MLFeatureValue {
        if let image = d.imageConstraint {
            return MLFeatureValue(pixelBuffer: try pixelBuffer(planes: values, width: image.pixelsWide, height: image.pixelsHigh))
        }
        guard let constraint = d.multiArrayConstraint else {
            throw UsageError(description: "input `\(d.name)` is neither an image nor a multiarray")
        }
        var shape = constraint.shape
        if !shape.isEmpty { shape[0] = 1 }
        let array = try MLMultiArray(shape: shape, dataType: constraint.dataType)
        guard array.count == values.count else {
            throw UsageError(description: "input `\(d.name)` takes \(array.count) values per example, got \(values.count)")
        }
        // NSNumber subscripts convert to any element type (fp16 included); they run once
        // per input, not per prediction, so their speed does not matter.
        for (index, value) in values.enumerated() { array[index] = NSNumber(value: value) }
        return MLFeatureValue(multiArray: array)
    }

    /// A 32BGRA pixel buffer from planes of 0...255 values (rounded, clamped).
    static func pixelBuffer(planes: [Float], width: Int, height: Int) throws -> CVPixelBuffer {
        let plane = width * height
        guard planes.count == 3 * plane else {
            throw UsageError(description: "an image of \(width)x\(height) takes \(3 * plane) values, got \(planes.count)")
        }
        var created: CVPixelBuffer?
        let status = CVPixelBufferCreate(kCFAllocatorDefault, width, height, kCVPixelFormatType_32BGRA, nil, &created)
        guard status == kCVReturnSuccess, let buffer = created else {
            throw UsageError(description: "CVPixelBufferCreate failed (CVReturn \(status))")
        }
        CVPixelBufferLockBaseAddress(buffer, [])
        defer { CVPixelBufferUnlockBaseAddress(buffer, []) }
        guard let base = CVPixelBufferGetBaseAddress(buffer) else { throw UsageError(description: "pixel buffer has no memory") }
        let rowBytes = CVPixelBufferGetBytesPerRow(buffer)
        let pixels = base.assumingMemoryBound(to: UInt8.self)
        func byte(_ value: Float) -> UInt8 { UInt8(min(max(value.rounded(), 0), 255)) }
        for y in 0..<height {
            for x in 0..<width {
                let i = y * width + x
                let at = y * rowBytes + x * 4
                (pixels[at], pixels[at + 1], pixels[at + 2], pixels[at + 3]) =
                    (byte(planes[2 * plane + i]), byte(planes[plane + i]), byte(planes[i]), 255)
            }
        }
        return buffer
    }

    /// The same values on every machine and run (SplitMix64): 0...255 planes for images,
    /// [-2, 2) (the range of normalised pixels) for multiarrays.
    static func synthetic(for d: MLFeatureDescription) -> [Float] {
        let count: Int
        if let image = d.imageConstraint {
            count = 3 * image.pixelsWide * image.pixelsHigh
        } else {
            count = (d.multiArrayConstraint?.shape.dropFirst().map(\.intValue) ?? []).reduce(1, *)
        }
        var state: UInt64 = 0x5EED_C0DE
        return (0..<count).map { _ in
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            let unit = Float((z ^ (z >> 31)) >> 40) / Float(1 << 24)
            return d.imageConstraint != nil ? (unit * 255).rounded() : unit * 4 - 2
        }
    }
}
#endif
