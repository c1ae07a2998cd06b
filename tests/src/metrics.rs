//! Reading a Prometheus text scrape in tests: sum the samples of a metric
//! whose labels include the given pairs.

/// One sample: metric name, label pairs, value.
type Sample = (String, Vec<(String, String)>, f64);

#[derive(Debug, Clone)]
pub struct Scrape {
    samples: Vec<Sample>,
}

impl Scrape {
    pub fn parse(text: &str) -> Self {
        let mut samples = Vec::new();
        for line in text.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let (series, value) = match line.rsplit_once(' ') {
                Some(split) => split,
                None => continue,
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name.to_string(), parse_labels(rest.trim_end_matches('}'))),
                None => (series.to_string(), Vec::new()),
            };
            samples.push((name, labels, value));
        }
        Scrape { samples }
    }

    /// Sum of `name` over the samples carrying all of `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .map(|(_, _, v)| v)
            .sum()
    }

    /// The values label `key` takes on the samples of `name` whose value is
    /// not zero, sorted (the members of an info metric).
    pub fn label_values(&self, name: &str, key: &str) -> Vec<String> {
        let mut values: Vec<String> = self
            .samples
            .iter()
            .filter(|(n, _, v)| n == name && *v != 0.0)
            .filter_map(|(_, l, _)| l.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone()))
            .collect();
        values.sort();
        values
    }

    /// The samples of `name` carrying all of `labels`, one per line, for
    /// a failure message that shows where the counts went.
    pub fn series(&self, name: &str, labels: &[(&str, &str)]) -> String {
        self.samples
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .map(|(n, l, v)| {
                let labels: Vec<String> = l.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
                format!("{n}{{{}}} {v}\n", labels.join(","))
            })
            .collect()
    }
}

fn parse_labels(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, escaped)) = chars.next() {
                        value.push(if escaped == 'n' { '\n' } else { escaped });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        out.push((key.trim_start_matches(',').trim().to_string(), value));
        rest = &after[end..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_matching_samples() {
        let s = Scrape::parse(
            "# TYPE request counter\nrequest_total{direction=\"inbound\"} 3\nrequest_total{direction=\"outbound\"} 4\nresponse_total{direction=\"inbound\",status_code=\"200\",classification=\"success\"} 2\n",
        );
        assert_eq!(s.sum("request_total", &[]), 7.0);
        assert_eq!(s.sum("request_total", &[("direction", "inbound")]), 3.0);
        assert_eq!(s.sum("response_total", &[("status_code", "200")]), 2.0);
    }
}
