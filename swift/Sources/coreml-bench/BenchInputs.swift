// The inputs predictions run on: the reference file's, the --image files, or one
// deterministic synthetic input, shaped for whatever the model takes (an RGB `image`
// or a float `pixel_values` multiarray).
#if canImport(CoreML)
import BenchCore
import CoreGraphics
import CoreML
import CoreVideo
import Foundation
import ImageIO

enum BenchInputError: Error, CustomStringConvertible {
    case noInputs
    case unsupportedInput(name: String, type: String)
    case unreadableImage(String)
    case referenceLacksInput(String)
    case referenceShape(name: String, expected: [Int], found: [Int])
    case pixelBuffer(CVReturn)

    var description: String {
        switch self {
        case .noInputs:
            return "the model has no inputs"
        case .unsupportedInput(let name, let type):
            return "input `\(name)` is a \(type); coreml-bench feeds images and float multiarrays"
        case .unreadableImage(let path):
            return "cannot read image \(path)"
        case .referenceLacksInput(let name):
            return "the reference file has no input `\(name)`"
        case .referenceShape(let name, let expected, let found):
            return "reference input `\(name)`: the model takes one example of \(expected), the file has \(found) per example"
        case .pixelBuffer(let status):
            return "could not create a pixel buffer (CVReturn \(status))"
        }
    }
}

struct BenchInputs {
    var source: InputSource
    var examples: [MLFeatureProvider]

    /// Example `index`, cycling, so any number of predictions can run on few inputs.
    func example(_ index: Int) -> MLFeatureProvider {
        examples[index % examples.count]
    }

    static func make(for model: MLModel, options: BenchOptions, reference: ReferenceFile?) throws -> BenchInputs {
        let descriptions = model.modelDescription.inputDescriptionsByName.values.sorted { $0.name < $1.name }
        guard !descriptions.isEmpty else { throw BenchInputError.noInputs }
        if let reference {
            let examples = try (0..<reference.examples).map { index in
                try provider(descriptions) { try InputValues.fromReference(reference, example: index, for: $0) }
            }
            return BenchInputs(source: .reference, examples: examples)
        }
        if !options.imagePaths.isEmpty {
            let examples = try options.imagePaths.map { path in
                try provider(descriptions) { try InputValues.fromImage(at: path, for: $0) }
            }
            return BenchInputs(source: .images, examples: examples)
        }
        let synthetic = try provider(descriptions) { try InputValues.synthetic(for: $0) }
        return BenchInputs(source: .synthetic, examples: [synthetic])
    }

    /// One feature provider with a value for every input.
    private static func provider(
        _ descriptions: [MLFeatureDescription],
        value: (MLFeatureDescription) throws -> MLFeatureValue
    ) throws -> MLFeatureProvider {
        var values: [String: MLFeatureValue] = [:]
        for description in descriptions {
            values[description.name] = try value(description)
        }
        return try MLDictionaryFeatureProvider(dictionary: values)
    }
}

/// Builds one input value from each kind of source.
enum InputValues {
    static func synthetic(for description: MLFeatureDescription) throws -> MLFeatureValue {
        switch description.type {
        case .image:
            let (width, height) = imageSize(description)
            let bytes = SyntheticInput.rgbBytes(width: width, height: height)
            return MLFeatureValue(pixelBuffer: try PixelBuffers.make(rgb: bytes, width: width, height: height))
        case .multiArray:
            let shape = arrayShape(description)
            let values = SyntheticInput.normalisedPixels(count: shape.reduce(1, *))
            return MLFeatureValue(multiArray: try MultiArrays.make(values, shape: shape, like: description))
        default:
            throw unsupported(description)
        }
    }

    /// An image file: Core ML scales it for image inputs; for multiarray inputs it is
    /// resized with Core Graphics and normalised with ImageNet's mean and std (the
    /// usual ViT preprocessing; the package does not record its own).
    static func fromImage(at path: String, for description: MLFeatureDescription) throws -> MLFeatureValue {
        let url = URL(fileURLWithPath: path)
        switch description.type {
        case .image:
            guard let constraint = description.imageConstraint else { throw unsupported(description) }
            return try MLFeatureValue(imageAt: url, constraint: constraint, options: nil)
        case .multiArray:
            let shape = arrayShape(description)
            // Images fill the last two axes; anything smaller is not an image tensor.
            guard shape.count >= 2 else { throw unsupported(description) }
            let (height, width) = (shape[shape.count - 2], shape[shape.count - 1])
            guard let rgb = ImageLoading.rgbBytes(of: url, width: width, height: height) else {
                throw BenchInputError.unreadableImage(path)
            }
            let planes = ImageLoading.normalisedPlanes(rgb: rgb, width: width, height: height)
            return MLFeatureValue(multiArray: try MultiArrays.make(planes, shape: shape, like: description))
        default:
            throw unsupported(description)
        }
    }

    /// Example `index` of the reference file's tensor named like the input: `image`
    /// holds 0...255 RGB planes [3, H, W] per example, `pixel_values` normalised ones.
    static func fromReference(
        _ reference: ReferenceFile, example index: Int, for description: MLFeatureDescription
    ) throws -> MLFeatureValue {
        guard let tensor = reference.inputs[description.name] else {
            throw BenchInputError.referenceLacksInput(description.name)
        }
        let values = tensor.example(index)
        switch description.type {
        case .image:
            let (width, height) = imageSize(description)
            guard Array(tensor.shape.dropFirst()) == [3, height, width] else {
                throw BenchInputError.referenceShape(
                    name: description.name, expected: [3, height, width], found: Array(tensor.shape.dropFirst()))
            }
            let bytes = ImageLoading.interleavedBytes(planes: values, width: width, height: height)
            return MLFeatureValue(pixelBuffer: try PixelBuffers.make(rgb: bytes, width: width, height: height))
        case .multiArray:
            let shape = arrayShape(description)
            guard Array(tensor.shape.dropFirst()) == Array(shape.dropFirst()) else {
                throw BenchInputError.referenceShape(
                    name: description.name, expected: Array(shape.dropFirst()), found: Array(tensor.shape.dropFirst()))
            }
            return MLFeatureValue(multiArray: try MultiArrays.make(values, shape: shape, like: description))
        default:
            throw unsupported(description)
        }
    }

    static func imageSize(_ description: MLFeatureDescription) -> (width: Int, height: Int) {
        let constraint = description.imageConstraint
        return (constraint?.pixelsWide ?? 224, constraint?.pixelsHigh ?? 224)
    }

    /// The multiarray shape, batch axis set to one example.
    static func arrayShape(_ description: MLFeatureDescription) -> [Int] {
        var shape = description.multiArrayConstraint?.shape.map(\.intValue) ?? [1, 3, 224, 224]
        if !shape.isEmpty {
            shape[0] = 1
        }
        return shape
    }

    static func unsupported(_ description: MLFeatureDescription) -> BenchInputError {
        .unsupportedInput(name: description.name, type: FeatureKind(description.type).rawValue)
    }
}

enum MultiArrays {
    /// A multiarray of the input's element type holding `values`. NSNumber subscripts
    /// convert to any element type (fp16 included) and run once per input, not per
    /// prediction, so their speed does not matter.
    static func make(_ values: [Float], shape: [Int], like description: MLFeatureDescription) throws -> MLMultiArray {
        let dataType = description.multiArrayConstraint?.dataType ?? .float32
        let array = try MLMultiArray(shape: shape.map { NSNumber(value: $0) }, dataType: dataType)
        for (index, value) in values.enumerated() {
            array[index] = NSNumber(value: value)
        }
        return array
    }
}

enum PixelBuffers {
    /// A 32BGRA pixel buffer from interleaved RGB bytes; Core ML converts it to the
    /// model's image format.
    static func make(rgb: [UInt8], width: Int, height: Int) throws -> CVPixelBuffer {
        var buffer: CVPixelBuffer?
        let status = CVPixelBufferCreate(kCFAllocatorDefault, width, height, kCVPixelFormatType_32BGRA, nil, &buffer)
        guard status == kCVReturnSuccess, let buffer else { throw BenchInputError.pixelBuffer(status) }

        CVPixelBufferLockBaseAddress(buffer, [])
        defer { CVPixelBufferUnlockBaseAddress(buffer, []) }
        guard let base = CVPixelBufferGetBaseAddress(buffer) else { throw BenchInputError.pixelBuffer(status) }
        let rowBytes = CVPixelBufferGetBytesPerRow(buffer)
        let pixels = base.assumingMemoryBound(to: UInt8.self)
        for y in 0..<height {
            for x in 0..<width {
                let source = (y * width + x) * 3
                let target = y * rowBytes + x * 4
                pixels[target] = rgb[source + 2]
                pixels[target + 1] = rgb[source + 1]
                pixels[target + 2] = rgb[source]
                pixels[target + 3] = 255
            }
        }
        return buffer
    }
}

enum ImageLoading {
    static let imageNetMean: [Float] = [0.485, 0.456, 0.406]
    static let imageNetStd: [Float] = [0.229, 0.224, 0.225]

    /// The image at `url` drawn into width x height RGB bytes (stretched to fit).
    static func rgbBytes(of url: URL, width: Int, height: Int) -> [UInt8]? {
        guard
            let source = CGImageSourceCreateWithURL(url as CFURL, nil),
            let image = CGImageSourceCreateImageAtIndex(source, 0, nil),
            let space = CGColorSpace(name: CGColorSpace.sRGB),
            let context = CGContext(
                data: nil, width: width, height: height, bitsPerComponent: 8, bytesPerRow: width * 4,
                space: space, bitmapInfo: CGImageAlphaInfo.noneSkipLast.rawValue)
        else { return nil }
        context.interpolationQuality = .high
        context.draw(image, in: CGRect(x: 0, y: 0, width: width, height: height))
        guard let data = context.data else { return nil }
        let rgba = data.bindMemory(to: UInt8.self, capacity: width * height * 4)
        var rgb = [UInt8](repeating: 0, count: width * height * 3)
        for pixel in 0..<(width * height) {
            for channel in 0..<3 {
                rgb[pixel * 3 + channel] = rgba[pixel * 4 + channel]
            }
        }
        return rgb
    }

    /// Interleaved RGB bytes to normalised planes [3, H, W].
    static func normalisedPlanes(rgb: [UInt8], width: Int, height: Int) -> [Float] {
        let plane = width * height
        var planes = [Float](repeating: 0, count: 3 * plane)
        for pixel in 0..<plane {
            for channel in 0..<3 {
                let unit = Float(rgb[pixel * 3 + channel]) / 255
                planes[channel * plane + pixel] = (unit - imageNetMean[channel]) / imageNetStd[channel]
            }
        }
        return planes
    }

    /// Planes [3, H, W] of 0...255 values to interleaved RGB bytes, clamped and rounded.
    static func interleavedBytes(planes: [Float], width: Int, height: Int) -> [UInt8] {
        let plane = width * height
        var rgb = [UInt8](repeating: 0, count: 3 * plane)
        for pixel in 0..<plane {
            for channel in 0..<3 {
                let value = planes[channel * plane + pixel].rounded()
                rgb[pixel * 3 + channel] = UInt8(min(max(value, 0), 255))
            }
        }
        return rgb
    }
}
#endif
