//! Samples in, figures out: median, min and max, and the one wire format every cell process
//! prints its samples in (a JSON list of seconds, one per repetition).

/// The figures of one cell, in seconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Summary {
    /// How many timed repetitions.
    pub(crate) n: usize,
    /// The median (the mean of the two middle samples for an even count).
    pub(crate) median: f64,
    /// The fastest repetition.
    pub(crate) min: f64,
    /// The slowest repetition.
    pub(crate) max: f64,
}

impl Summary {
    /// The figures of `samples`; `None` if there are none.
    pub(crate) fn of(samples: &[f64]) -> Option<Self> {
        let mut s = samples.to_vec();
        s.sort_by(f64::total_cmp);
        let n = s.len();
        let median = match n {
            0 => return None,
            n if n % 2 == 1 => s[n / 2],
            n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
        };
        Some(Self {
            n,
            median,
            min: s[0],
            max: s[n - 1],
        })
    }
}

/// Samples as a cell process prints them: `[0.000123, 0.000119]`.
pub(crate) fn to_json(samples: &[f64]) -> String {
    let items: Vec<String> = samples.iter().map(|s| format!("{s:e}")).collect();
    format!("[{}]", items.join(", "))
}

/// Reads the samples a cell process printed: the last line of its output that is a JSON list
/// of numbers (anything printed before it is ignored).
pub(crate) fn parse_json(output: &str) -> Result<Vec<f64>, String> {
    let line = output
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('[') && l.ends_with(']'))
        .ok_or_else(|| format!("no list of timings in the output {output:?}"))?;
    let inner = line[1..line.len() - 1].trim();
    if inner.is_empty() {
        return Err("the list of timings is empty".to_owned());
    }
    inner
        .split(',')
        .map(|item| {
            let item = item.trim();
            match item.parse::<f64>() {
                Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
                _ => Err(format!("bad timing {item:?} in {line:?}")),
            }
        })
        .collect()
}

/// A duration in seconds, in the unit that suits it, with three significant digits.
pub(crate) fn fmt_secs(s: f64) -> String {
    let (value, unit) = if s < 1e-3 {
        (s * 1e6, "µs")
    } else if s < 1.0 {
        (s * 1e3, "ms")
    } else {
        (s, "s")
    };
    let digits = if value >= 100.0 {
        0
    } else if value >= 10.0 {
        1
    } else {
        2
    };
    format!("{value:.digits$} {unit}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        let odd = Summary::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((odd.n, odd.median, odd.min, odd.max), (3, 2.0, 1.0, 3.0));
        let even = Summary::of(&[4.0, 1.0, 2.0, 3.0]).unwrap();
        assert_eq!(even.median, 2.5);
        assert!(Summary::of(&[]).is_none());
    }

    #[test]
    fn json_round_trip() {
        let samples = [0.000123, 1.5, 7e-7];
        assert_eq!(parse_json(&to_json(&samples)).unwrap(), samples);
        // As Python's json.dumps writes it, after other output.
        let py = "hello\n[0.00012, 1.5e-05]\n";
        assert_eq!(parse_json(py).unwrap(), [0.00012, 1.5e-05]);
        assert!(parse_json("[]").is_err());
        assert!(parse_json("[1, x]").is_err());
        assert!(parse_json("nothing").is_err());
    }

    #[test]
    fn units() {
        assert_eq!(fmt_secs(0.000_091_23), "91.2 µs");
        assert_eq!(fmt_secs(0.000_912_3), "912 µs");
        assert_eq!(fmt_secs(0.070_4), "70.4 ms");
        assert_eq!(fmt_secs(0.001_234), "1.23 ms");
        assert_eq!(fmt_secs(2.5), "2.50 s");
    }
}
