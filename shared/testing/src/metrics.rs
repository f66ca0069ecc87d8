//! A parser for Prometheus text, enough for tests to read exact values.

/// Label pairs, sorted by name.
type Labels = Vec<(String, String)>;

/// One scrape of a `/metrics` page in the Prometheus text format, parsed
/// enough for tests to read exact values.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    text: String,
    /// `(name, labels, value)` per sample line.
    samples: Vec<(String, Labels, f64)>,
    /// Names with a `# TYPE` line, and those with a `# HELP` line.
    typed: Vec<String>,
    helped: Vec<String>,
}

impl Scrape {
    /// `GET url`, parsed.
    ///
    /// # Panics
    /// When the page does not answer 200.
    pub async fn fetch(url: &str) -> Self {
        let response = reqwest::get(url).await.expect("the metrics page answers");
        assert_eq!(response.status().as_u16(), 200, "GET {url}");
        Self::parse(&response.text().await.expect("the metrics text"))
    }

    /// Scrapes `url` until `done` holds or `timeout` passes; returns the
    /// last scrape either way, for the caller's assertions to explain.
    pub async fn fetch_until(
        url: &str,
        timeout: std::time::Duration,
        done: impl Fn(&Self) -> bool,
    ) -> Self {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let scrape = Self::fetch(url).await;
            if done(&scrape) || tokio::time::Instant::now() >= deadline {
                return scrape;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// Parses the text format: comments, then `name{label="value",…} value`.
    pub fn parse(text: &str) -> Self {
        let mut scrape = Self {
            text: text.to_owned(),
            ..Self::default()
        };
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                scrape
                    .typed
                    .extend(rest.split(' ').next().map(str::to_owned));
            } else if let Some(rest) = line.strip_prefix("# HELP ") {
                scrape
                    .helped
                    .extend(rest.split(' ').next().map(str::to_owned));
            } else if !line.starts_with('#') {
                scrape.samples.push(parse_sample(line));
            }
        }
        scrape
    }

    /// The value of the sample `name` whose labels are exactly `labels`
    /// (in any order); `None` when there is no such sample.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut wanted: Labels = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        wanted.sort();
        self.samples
            .iter()
            .find(|(n, l, _)| n == name && *l == wanted)
            .map(|(_, _, v)| *v)
    }

    /// Whether any sample of `name` exists.
    pub fn has(&self, name: &str) -> bool {
        self.samples.iter().any(|(n, _, _)| n == name)
    }

    /// Series with a `# TYPE` line but no `# HELP` line.
    pub fn undescribed(&self) -> Vec<&str> {
        self.typed
            .iter()
            .filter(|t| !self.helped.contains(t))
            .map(String::as_str)
            .collect()
    }

    pub fn text(&self) -> &str {
        &self.text
    }
}

fn parse_sample(line: &str) -> (String, Labels, f64) {
    let (name, labels, rest) = match line.find('{') {
        Some(open) => {
            let close = line.rfind('}').expect("a label set ends with }");
            (
                &line[..open],
                parse_labels(&line[open + 1..close]),
                &line[close + 1..],
            )
        }
        None => {
            let (name, rest) = line.split_once(' ').expect("a sample has a value");
            (name, Vec::new(), rest)
        }
    };
    let value = rest
        .split_whitespace()
        .next()
        .and_then(|v| match v {
            "+Inf" => Some(f64::INFINITY),
            "-Inf" => Some(f64::NEG_INFINITY),
            v => v.parse().ok(),
        })
        .unwrap_or_else(|| panic!("no value in {line:?}"));
    (name.to_owned(), labels, value)
}

/// `a="x",b="y\"z"` → sorted pairs, escapes undone.
fn parse_labels(text: &str) -> Labels {
    let mut labels = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        let key = key.trim_start_matches(',').trim();
        if key.is_empty() {
            break;
        }
        assert_eq!(chars.next(), Some('"'), "label {key} has a quoted value");
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '"' => break,
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(other) => value.push(other),
                    None => {}
                },
                c => value.push(c),
            }
        }
        labels.push((key.to_owned(), value));
    }
    labels.sort();
    labels
}

#[cfg(test)]
mod tests {
    use super::Scrape;

    #[test]
    fn a_scrape_reads_values_by_exact_labels_and_finds_undescribed_series() {
        let scrape = Scrape::parse(concat!(
            "# HELP a_total Things.\n",
            "# TYPE a_total counter\n",
            "a_total{kind=\"x\",route=\"/t/{id}\"} 3\n",
            "a_total{kind=\"y \\\"q\\\"\"} 1\n\n",
            "# TYPE b gauge\n",
            "b 2.5\n",
            "h_bucket{le=\"+Inf\"} 4\n",
        ));
        assert_eq!(
            scrape.value("a_total", &[("route", "/t/{id}"), ("kind", "x")]),
            Some(3.0)
        );
        assert_eq!(scrape.value("a_total", &[("kind", "y \"q\"")]), Some(1.0));
        assert_eq!(
            scrape.value("a_total", &[("kind", "x")]),
            None,
            "labels match exactly"
        );
        assert_eq!(scrape.value("b", &[]), Some(2.5));
        assert_eq!(scrape.value("h_bucket", &[("le", "+Inf")]), Some(4.0));
        assert_eq!(scrape.undescribed(), ["b"]);
    }
}
