// Timing with the monotonic clock, in milliseconds (the report's unit).

public enum Stopwatch {
    /// Runs `body` and returns its result with the time it took.
    public static func measure<T>(_ body: () throws -> T) rethrows -> (result: T, milliseconds: Double) {
        let clock = ContinuousClock()
        let start = clock.now
        let result = try body()
        return (result, milliseconds(clock.now - start))
    }

    /// The async variant, for Core ML's compile and plan calls. A separate name, because
    /// overloads differing only in `async` resolve by context and would surprise.
    public static func measureAsync<T>(
        _ body: () async throws -> T
    ) async rethrows -> (result: T, milliseconds: Double) {
        let clock = ContinuousClock()
        let start = clock.now
        let result = try await body()
        return (result, milliseconds(clock.now - start))
    }

    public static func milliseconds(_ duration: Duration) -> Double {
        let parts = duration.components
        return Double(parts.seconds) * 1000 + Double(parts.attoseconds) / 1e15
    }
}
