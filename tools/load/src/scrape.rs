//! The services' own view of a run: their Prometheus `/metrics`, read before and after, so the
//! report can say what the stages did (batch sizes, queue depth) and not only what the client
//! saw.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The histogram of samples per batched network call.
const BATCH_SIZE: &str = "vidcascade_stage_batch_size";

/// Every `vidcascade_*` sample (`name{labels}` -> value) of one or more services.
pub type Samples = BTreeMap<String, f64>;

/// Reads `/metrics` of every address (`host:port`) and merges their `vidcascade_*` samples; a
/// sample two services export is summed (two replicas of a stage).
pub async fn scrape(addrs: &[String]) -> anyhow::Result<Samples> {
    let mut samples = Samples::new();
    for addr in addrs {
        for (name, value) in parse(&fetch(addr).await?) {
            *samples.entry(name).or_insert(0.0) += value;
        }
    }
    Ok(samples)
}

async fn fetch(addr: &str) -> anyhow::Result<String> {
    let host = addr
        .trim_start_matches("http://")
        .trim_end_matches("/metrics");
    let read = async {
        let mut stream = tokio::net::TcpStream::connect(host).await?;
        let request = format!("GET /metrics HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut text = String::new();
        stream.read_to_string(&mut text).await?;
        Ok::<_, std::io::Error>(text)
    };
    let text = tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .with_context(|| format!("{host}/metrics did not answer within 10 s"))?
        .with_context(|| format!("reading {host}/metrics"))?;
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        bail!("{host}/metrics: not an HTTP response");
    };
    if !head.starts_with("HTTP/1.1 200") {
        bail!(
            "{host}/metrics: {}",
            head.lines().next().unwrap_or_default()
        );
    }
    Ok(body.to_string())
}

/// The `vidcascade_*` samples of Prometheus text.
fn parse(text: &str) -> impl Iterator<Item = (String, f64)> + '_ {
    text.lines()
        .filter(|line| line.starts_with("vidcascade_"))
        .filter_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            Some((name.to_string(), value.parse().ok()?))
        })
}

/// The samples before and after a run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetricsDelta {
    /// Before the run.
    pub before: Samples,
    /// After it.
    pub after: Samples,
}

impl MetricsDelta {
    /// How much `name` (an exact sample key) grew over the run.
    fn growth(&self, name: &str) -> f64 {
        self.after.get(name).copied().unwrap_or(0.0) - self.before.get(name).copied().unwrap_or(0.0)
    }

    /// Sum of the growth of every sample whose key starts with `prefix`.
    fn growth_of_prefix(&self, prefix: &str) -> f64 {
        self.after
            .keys()
            .filter(|k| k.starts_with(prefix))
            .map(|k| self.growth(k))
            .sum()
    }

    /// Mean samples per batched call during the run; `None` without batch metrics.
    pub fn mean_batch_size(&self) -> Option<f64> {
        let calls = self.growth_of_prefix(&format!("{BATCH_SIZE}_count"));
        let samples = self.growth_of_prefix(&format!("{BATCH_SIZE}_sum"));
        (calls > 0.0).then(|| samples / calls)
    }

    /// Batched calls during the run per batch-size bucket (`le` -> calls with at most that many
    /// samples and more than the previous bound), summed over the services.
    pub fn batch_buckets(&self) -> BTreeMap<String, f64> {
        let prefix = format!("{BATCH_SIZE}_bucket{{");
        let mut cumulative: BTreeMap<String, f64> = BTreeMap::new();
        for key in self.after.keys().filter(|k| k.starts_with(&prefix)) {
            if let Some(le) = label(key, "le") {
                *cumulative.entry(le).or_insert(0.0) += self.growth(key);
            }
        }
        let mut bounds: Vec<(f64, String, f64)> = cumulative
            .into_iter()
            .map(|(le, n)| (le.parse().unwrap_or(f64::INFINITY), le, n))
            .collect();
        bounds.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut previous = 0.0;
        let mut buckets = BTreeMap::new();
        for (_, le, n) in bounds {
            buckets.insert(le, n - previous);
            previous = n;
        }
        buckets
    }
}

/// The value of label `name` in a sample key `metric{a="x",name="y"}`.
fn label(key: &str, name: &str) -> Option<String> {
    let start = key.find(&format!("{name}=\""))? + name.len() + 2;
    let end = key[start..].find('"')? + start;
    Some(key[start..end].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = "# HELP x\n\
vidcascade_stage_batch_size_bucket{stage=\"base\",le=\"1\"} 2\n\
vidcascade_stage_batch_size_bucket{stage=\"base\",le=\"2\"} 2\n\
vidcascade_stage_batch_size_bucket{stage=\"base\",le=\"+Inf\"} 2\n\
vidcascade_stage_batch_size_sum{stage=\"base\"} 2\n\
vidcascade_stage_batch_size_count{stage=\"base\"} 2\n\
other_metric 5\n";

    const AFTER: &str = "vidcascade_stage_batch_size_bucket{stage=\"base\",le=\"1\"} 4\n\
vidcascade_stage_batch_size_bucket{stage=\"base\",le=\"2\"} 10\n\
vidcascade_stage_batch_size_bucket{stage=\"base\",le=\"+Inf\"} 10\n\
vidcascade_stage_batch_size_sum{stage=\"base\"} 20\n\
vidcascade_stage_batch_size_count{stage=\"base\"} 10\n\
vidcascade_stage_queue_depth{stage=\"base\"} 0\n";

    #[test]
    fn batch_sizes_come_from_the_histogram_growth() {
        let delta = MetricsDelta {
            before: parse(BEFORE).collect(),
            after: parse(AFTER).collect(),
        };
        assert!(!delta.before.contains_key("other_metric"));
        // 8 calls with 18 samples during the run: 2 of size 1, 6 of size 2.
        assert_eq!(delta.mean_batch_size(), Some(18.0 / 8.0));
        let buckets = delta.batch_buckets();
        assert_eq!(buckets.get("1"), Some(&2.0));
        assert_eq!(buckets.get("2"), Some(&6.0));
        assert_eq!(buckets.get("+Inf"), Some(&0.0));
    }
}
