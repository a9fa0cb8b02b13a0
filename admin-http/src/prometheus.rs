//! The Prometheus text exposition format (0.0.4): one `# HELP` and `# TYPE` line per
//! family, then its samples. Written by hand: the broker's figures are plain counters
//! collected at scrape time, so a metrics library would only add a second copy of them.

use std::fmt::Write;

use messs_broker::metrics::{MetricKind, Sample};

/// The content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `samples` as exposition text; the samples of a family must be adjacent.
pub fn render(samples: &[Sample]) -> String {
    let mut out = String::with_capacity(samples.len() * 80);
    let mut family = "";
    for s in samples {
        if s.name != family {
            family = s.name;
            let kind = match s.kind {
                MetricKind::Counter => "counter",
                MetricKind::Gauge => "gauge",
                MetricKind::Histogram => "histogram",
            };
            let _ = writeln!(out, "# HELP {} {}", s.name, escape(s.help, false));
            let _ = writeln!(out, "# TYPE {} {kind}", s.name);
        }
        out.push_str(s.name);
        out.push_str(s.suffix);
        if !s.labels.is_empty() {
            out.push('{');
            for (i, (name, value)) in s.labels.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let _ = write!(out, "{name}=\"{}\"", escape(value, true));
            }
            out.push('}');
        }
        let _ = writeln!(out, " {}", s.value);
    }
    out
}

/// Escapes `\` and newlines (and `"` in label values), as the format requires: a tenant id
/// is the operator's, but it must not break the exposition.
fn escape(s: &str, quote: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quote => out.push_str("\\\""),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(name: &'static str, labels: &[(&'static str, &str)], value: u64) -> Sample {
        let mut s = Sample::new(
            name,
            "Help with a \\ and\na newline.",
            MetricKind::Counter,
            value,
        );
        for (k, v) in labels {
            s = s.label(k, *v);
        }
        s
    }

    #[test]
    fn one_header_per_family_and_escaped_labels() {
        let text = render(&[
            sample("a_total", &[("reason", "x")], 1),
            sample("a_total", &[("reason", "y\"z\\\n")], 2),
            sample("b_total", &[], 3),
        ]);
        assert_eq!(
            text,
            "# HELP a_total Help with a \\\\ and\\na newline.\n\
             # TYPE a_total counter\n\
             a_total{reason=\"x\"} 1\n\
             a_total{reason=\"y\\\"z\\\\\\n\"} 2\n\
             # HELP b_total Help with a \\\\ and\\na newline.\n\
             # TYPE b_total counter\n\
             b_total 3\n"
        );
    }

    #[test]
    fn a_histogram_has_one_header_and_suffixed_lines() {
        let h = |suffix, le: Option<&str>, value: f64| {
            let mut s = Sample::new("w_seconds", "Write time.", MetricKind::Histogram, 0);
            s.suffix = suffix;
            s.value = value;
            match le {
                Some(le) => s.label("le", le),
                None => s,
            }
        };
        let text = render(&[
            h("_bucket", Some("0.001"), 2.0),
            h("_bucket", Some("+Inf"), 3.0),
            h("_sum", None, 0.0125),
            h("_count", None, 3.0),
        ]);
        assert_eq!(
            text,
            "# HELP w_seconds Write time.\n\
             # TYPE w_seconds histogram\n\
             w_seconds_bucket{le=\"0.001\"} 2\n\
             w_seconds_bucket{le=\"+Inf\"} 3\n\
             w_seconds_sum 0.0125\n\
             w_seconds_count 3\n"
        );
    }
}
