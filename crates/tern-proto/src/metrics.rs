//! A process's counters and gauges as one list of samples, which both the
//! STATS reply (`name value` lines, `tern stats`) and the Prometheus
//! exporter (`tern-metrics`) render: one place says what is counted.

use std::fmt::Write;

/// Whether a sample only grows (a count of events) or goes up and down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    /// A distribution: `histogram` holds it, `value` its count.
    Histogram,
}

/// Observations counted in buckets: each bucket's own count (not
/// cumulative) by its upper bound, the last one's bound `f64::MAX` (+Inf).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Histogram {
    pub sum: f64,
    pub buckets: Vec<(f64, u64)>,
}

/// The family a sample belongs to, which its STATS name is prefixed with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Group {
    /// Its own name.
    Plain,
    /// A datagram dropped for this reason (STATS: `drop_<reason>`).
    Dropped,
    /// A counter of the XDP program (STATS: `xdp.<name>`, then per CPU).
    Xdp,
}

/// One counter or gauge.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Its name within its group (`writes`, `truncated`).
    pub name: String,
    pub kind: Kind,
    pub group: Group,
    /// The shard it counts for (STATS: `shard<N>.` first).
    pub shard: Option<u32>,
    pub value: u64,
    /// Each CPU's share of `value` (the XDP program's per-CPU counters).
    pub per_cpu: Vec<u64>,
    /// More labels, for metrics only (the gateway's `command`): samples
    /// that STATS lists have none.
    pub labels: Vec<(&'static str, String)>,
    /// A histogram's buckets (metrics only; STATS shows the count).
    pub histogram: Option<Histogram>,
}

/// The samples of one process, in the order STATS lists them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Samples(pub Vec<Sample>);

impl Samples {
    pub fn new() -> Samples {
        Samples::default()
    }

    /// Adds a sample of `group` and `shard`.
    pub fn add(
        &mut self,
        kind: Kind,
        group: Group,
        shard: Option<u32>,
        name: impl Into<String>,
        value: u64,
    ) -> &mut Sample {
        self.0.push(Sample {
            name: name.into(),
            kind,
            group,
            shard,
            value,
            per_cpu: Vec::new(),
            labels: Vec::new(),
            histogram: None,
        });
        self.0.last_mut().expect("just pushed")
    }

    pub fn counter(&mut self, name: impl Into<String>, value: u64) -> &mut Sample {
        self.add(Kind::Counter, Group::Plain, None, name, value)
    }

    pub fn gauge(&mut self, name: impl Into<String>, value: u64) -> &mut Sample {
        self.add(Kind::Gauge, Group::Plain, None, name, value)
    }

    /// The value of the sample named `name` (in STATS's naming, e.g.
    /// `shard0.writes`), if there is one.
    pub fn get(&self, stats_name: &str) -> Option<u64> {
        self.0
            .iter()
            .find(|sample| sample.stats_name() == stats_name)
            .map(|sample| sample.value)
    }

    /// The STATS text: a `name value` line per sample (per-CPU values
    /// after the total).
    pub fn text(&self) -> String {
        let mut text = String::new();
        for sample in &self.0 {
            let _ = write!(text, "{} {}", sample.stats_name(), sample.value);
            for value in &sample.per_cpu {
                let _ = write!(text, " {value}");
            }
            text.push('\n');
        }
        text
    }
}

impl Sample {
    /// Its name in STATS: `[shard<N>.][drop_|xdp.]<name>`.
    pub fn stats_name(&self) -> String {
        let shard = self
            .shard
            .map_or_else(String::new, |shard| format!("shard{shard}."));
        let group = match self.group {
            Group::Plain => "",
            Group::Dropped => "drop_",
            Group::Xdp => "xdp.",
        };
        format!("{shard}{group}{}", self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stats_text_names_each_sample_by_shard_and_group() {
        let mut samples = Samples::new();
        samples.counter("writes", 3);
        samples.add(Kind::Counter, Group::Dropped, None, "truncated", 1);
        samples.add(Kind::Gauge, Group::Plain, Some(2), "next_seq", 9);
        samples
            .add(Kind::Counter, Group::Xdp, None, "pass", 5)
            .per_cpu = vec![2, 3];
        assert_eq!(
            samples.text(),
            "writes 3\ndrop_truncated 1\nshard2.next_seq 9\nxdp.pass 5 2 3\n"
        );
        assert_eq!(samples.get("shard2.next_seq"), Some(9));
        assert_eq!(samples.get("next_seq"), None);
    }
}
