// A prediction's outputs as flat float arrays, so any two runs can be compared.
#if canImport(CoreML)
import BenchCore
import CoreML

enum OutputReader {
    /// Every numeric output, by name. Strings (the predicted `classLabel`) and images are
    /// left out: the class probabilities carry the same decision in comparable form.
    static func values(of provider: MLFeatureProvider) -> ExampleOutputs {
        var outputs: ExampleOutputs = [:]
        for name in provider.featureNames {
            if let value = provider.featureValue(for: name), let numbers = numbers(in: value) {
                outputs[name] = numbers
            }
        }
        return outputs
    }

    static func numbers(in value: MLFeatureValue) -> [Float]? {
        switch value.type {
        case .multiArray:
            // MLShapedArray reads any element type and any strides in row-major order.
            return value.multiArrayValue.map { MLShapedArray<Float>(converting: $0).scalars }
        case .dictionary:
            // Class -> probability, ordered by class label, as ReferenceFile orders its own.
            return value.dictionaryValue
                .map { (label: "\($0.key)", probability: $0.value.floatValue) }
                .sorted { $0.label < $1.label }
                .map(\.probability)
        case .double:
            return [Float(value.doubleValue)]
        case .int64:
            return [Float(value.int64Value)]
        default:
            return nil
        }
    }
}
#endif
