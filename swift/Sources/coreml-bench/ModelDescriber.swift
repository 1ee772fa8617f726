// The model's interface and metadata, as the report records them.
#if canImport(CoreML)
import BenchCore
import CoreML

enum ModelDescriber {
    static func info(path: String, description: MLModelDescription, compileMilliseconds: Double) -> ModelInfo {
        ModelInfo(
            path: path,
            inputs: features(description.inputDescriptionsByName),
            outputs: features(description.outputDescriptionsByName),
            metadata: description.metadata[.creatorDefinedKey] as? [String: String] ?? [:],
            compileMilliseconds: compileMilliseconds
        )
    }

    /// In name order, so reports of one model always list features alike.
    static func features(_ byName: [String: MLFeatureDescription]) -> [FeatureInfo] {
        byName.values.sorted { $0.name < $1.name }.map(feature)
    }

    static func feature(_ description: MLFeatureDescription) -> FeatureInfo {
        switch description.type {
        case .image:
            let shape = description.imageConstraint.map { [1, 3, $0.pixelsHigh, $0.pixelsWide] }
            return FeatureInfo(name: description.name, kind: .image, shape: shape)
        case .multiArray:
            let constraint = description.multiArrayConstraint
            return FeatureInfo(
                name: description.name,
                kind: .multiarray,
                shape: constraint?.shape.map(\.intValue),
                dataType: constraint.map { dataTypeName($0.dataType) }
            )
        default:
            return FeatureInfo(name: description.name, kind: FeatureKind(description.type))
        }
    }

    static func dataTypeName(_ dataType: MLMultiArrayDataType) -> String {
        switch dataType {
        case .float16: return "float16"
        case .float32: return "float32"
        case .double: return "float64"
        case .int32: return "int32"
        default: return "other"
        }
    }
}

extension FeatureKind {
    init(_ type: MLFeatureType) {
        switch type {
        case .image: self = .image
        case .multiArray: self = .multiarray
        case .dictionary: self = .dictionary
        case .string: self = .string
        case .int64: self = .int64
        case .double: self = .double
        default: self = .other
        }
    }
}
#endif
