// Summaries of timing samples.
//
// Percentile method: linear interpolation between the two closest ranks (Hyndman and
// Fan's definition 7, NumPy's default). For n sorted samples x[0] ... x[n-1] and a
// fraction p in [0, 1], the position is h = (n - 1) * p and the percentile is
// x[floor(h)] + (h - floor(h)) * (x[floor(h) + 1] - x[floor(h)]). So p = 0 is the
// minimum, p = 1 the maximum, and one sample is every percentile of itself. The Rust
// reader documents the same method; both follow schema/bench-report.schema.json.

public enum Statistics {
    /// The arithmetic mean, or nil for no samples.
    public static func mean(_ samples: [Double]) -> Double? {
        guard !samples.isEmpty else { return nil }
        return samples.reduce(0, +) / Double(samples.count)
    }

    /// Sample standard deviation (divides by n - 1); 0 for a single sample, nil for none.
    public static func standardDeviation(_ samples: [Double]) -> Double? {
        guard let average = mean(samples) else { return nil }
        guard samples.count > 1 else { return 0 }
        let squares = samples.reduce(0) { sum, sample in
            sum + (sample - average) * (sample - average)
        }
        return (squares / Double(samples.count - 1)).squareRoot()
    }

    /// The percentile `fraction` (0...1) of samples that are already sorted ascending.
    /// Nil for no samples or a fraction outside 0...1.
    public static func percentile(_ fraction: Double, ofSorted sorted: [Double]) -> Double? {
        guard !sorted.isEmpty, fraction >= 0, fraction <= 1 else { return nil }
        let position = Double(sorted.count - 1) * fraction
        let lower = Int(position.rounded(.down))
        let upper = min(lower + 1, sorted.count - 1)
        let weight = position - Double(lower)
        return sorted[lower] + weight * (sorted[upper] - sorted[lower])
    }

    /// The percentile `fraction` of samples in any order.
    public static func percentile(_ fraction: Double, of samples: [Double]) -> Double? {
        percentile(fraction, ofSorted: samples.sorted())
    }
}

extension Latency {
    /// Summarises single-prediction times in milliseconds; nil when there are none.
    public init?(millisecondSamples samples: [Double]) {
        let sorted = samples.sorted()
        guard
            let first = sorted.first,
            let last = sorted.last,
            let average = Statistics.mean(sorted),
            let spread = Statistics.standardDeviation(sorted),
            let median = Statistics.percentile(0.5, ofSorted: sorted),
            let p90 = Statistics.percentile(0.9, ofSorted: sorted),
            let p99 = Statistics.percentile(0.99, ofSorted: sorted)
        else { return nil }
        self.init(
            count: sorted.count,
            meanMilliseconds: average,
            standardDeviationMilliseconds: spread,
            minimumMilliseconds: first,
            p50Milliseconds: median,
            p90Milliseconds: p90,
            p99Milliseconds: p99,
            maximumMilliseconds: last
        )
    }

    /// Sequential single predictions per second at this mean latency.
    public var imagesPerSecond: Double {
        meanMilliseconds > 0 ? 1000 / meanMilliseconds : 0
    }
}
