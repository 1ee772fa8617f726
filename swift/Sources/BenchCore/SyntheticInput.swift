// A deterministic input for runs without --image: the same values on every machine
// and every run, so reports from two Macs are measured on the same data.

/// SplitMix64: tiny, fast and good enough to fill a test input.
public struct SplitMix64: RandomNumberGenerator, Sendable {
    private var state: UInt64

    public init(seed: UInt64) {
        state = seed
    }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var mixed = state
        mixed = (mixed ^ (mixed >> 30)) &* 0xBF58_476D_1CE4_E5B9
        mixed = (mixed ^ (mixed >> 27)) &* 0x94D0_49BB_1331_11EB
        return mixed ^ (mixed >> 31)
    }

    /// A value in [0, 1) built from the top 24 bits, which a Float holds exactly.
    public mutating func nextUnitFloat() -> Float {
        Float(next() >> 40) / Float(1 << 24)
    }
}

public enum SyntheticInput {
    public static let defaultSeed: UInt64 = 0x5EED_C0DE

    /// Values in [-2, 2): the range of normalised pixels, for `pixel_values` inputs.
    public static func normalisedPixels(count: Int, seed: UInt64 = defaultSeed) -> [Float] {
        var generator = SplitMix64(seed: seed)
        return (0..<count).map { _ in generator.nextUnitFloat() * 4 - 2 }
    }

    /// Interleaved RGB bytes, width * height * 3 of them, for `image` inputs.
    public static func rgbBytes(width: Int, height: Int, seed: UInt64 = defaultSeed) -> [UInt8] {
        var generator = SplitMix64(seed: seed)
        return (0..<(width * height * 3)).map { _ in UInt8(truncatingIfNeeded: generator.next() >> 56) }
    }
}
