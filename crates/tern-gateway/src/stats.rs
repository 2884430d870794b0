//! What `INFO` reports about the gateway itself: the counters of its
//! `stats` and `commandstats` sections (Redis's field names), and the
//! process's memory and CPU.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::commands::COMMANDS;
use crate::resp::Frame;

/// One command's counters (`cmdstat_<name>`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommandStat {
    /// Runs, failed ones included.
    pub calls: u64,
    pub usec: u64,
    /// Refused before running: wrong arity, or not authenticated.
    pub rejected_calls: u64,
    /// Ran and answered an error.
    pub failed_calls: u64,
}

/// One command's counters as every connection adds to them: atomics, so
/// no connection waits for another to count.
#[derive(Debug, Default)]
struct Counters {
    calls: AtomicU64,
    usec: AtomicU64,
    rejected_calls: AtomicU64,
    failed_calls: AtomicU64,
    /// Calls by how long they took: one count per bound of
    /// `LATENCY_BOUNDS_US` (at most it), then those over the last.
    latency: [AtomicU64; LATENCY_BOUNDS_US.len() + 1],
}

/// Upper bounds of the latency histogram's buckets, in microseconds.
const LATENCY_BOUNDS_US: [u64; 14] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
    5_000_000,
];

impl Counters {
    fn load(&self) -> CommandStat {
        CommandStat {
            calls: self.calls.load(Ordering::Relaxed),
            usec: self.usec.load(Ordering::Relaxed),
            rejected_calls: self.rejected_calls.load(Ordering::Relaxed),
            failed_calls: self.failed_calls.load(Ordering::Relaxed),
        }
    }
}

/// Counters shared by every connection.
#[derive(Debug)]
pub struct Stats {
    /// By the command's place in `commands::COMMANDS`.
    commands: Vec<Counters>,
    pub connections_received: AtomicU64,
    pub rejected_connections: AtomicU64,
    commands_processed: AtomicU64,
    error_replies: AtomicU64,
    pub net_input_bytes: AtomicU64,
    pub net_output_bytes: AtomicU64,
}

impl Stats {
    /// The counters as metrics samples (`tern_gateway_...`), each
    /// command's with its name as the `command` label.
    pub fn samples(&self, connected: u64) -> tern_proto::metrics::Samples {
        let mut samples = tern_proto::metrics::Samples::new();
        samples.gauge("connected_clients", connected);
        for (name, counter) in [
            ("connections_received", &self.connections_received),
            ("rejected_connections", &self.rejected_connections),
            ("commands_processed", &self.commands_processed),
            ("error_replies", &self.error_replies),
            ("net_input_bytes", &self.net_input_bytes),
            ("net_output_bytes", &self.net_output_bytes),
        ] {
            samples.counter(name, counter.load(Ordering::Relaxed));
        }
        for (spec, counters) in COMMANDS.iter().zip(&self.commands) {
            let stat = counters.load();
            if stat.calls == 0 && stat.rejected_calls == 0 {
                continue;
            }
            let labels = vec![("command", spec.name.to_string())];
            for (name, value) in [
                ("command_calls", stat.calls),
                ("command_rejected_calls", stat.rejected_calls),
                ("command_failed_calls", stat.failed_calls),
            ] {
                samples.counter(name, value).labels = labels.clone();
            }
            let bounds = LATENCY_BOUNDS_US
                .iter()
                .map(|bound| *bound as f64 / 1e6)
                .chain([f64::MAX]);
            let buckets: Vec<(f64, u64)> = bounds
                .zip(&counters.latency)
                .map(|(bound, count)| (bound, count.load(Ordering::Relaxed)))
                .collect();
            let count = buckets.iter().map(|(_, count)| count).sum();
            let sample = samples.add(
                tern_proto::metrics::Kind::Histogram,
                tern_proto::metrics::Group::Plain,
                None,
                "command_duration_seconds",
                count,
            );
            sample.labels = labels;
            sample.histogram = Some(tern_proto::metrics::Histogram {
                sum: stat.usec as f64 / 1e6,
                buckets,
            });
        }
        samples
    }
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            commands: COMMANDS.iter().map(|_| Counters::default()).collect(),
            connections_received: AtomicU64::new(0),
            rejected_connections: AtomicU64::new(0),
            commands_processed: AtomicU64::new(0),
            error_replies: AtomicU64::new(0),
            net_input_bytes: AtomicU64::new(0),
            net_output_bytes: AtomicU64::new(0),
        }
    }
}

impl Stats {
    /// Counts one command, the `command`-th of `COMMANDS` (None: one the
    /// gateway does not know, which gets no entry of its own, as in Redis),
    /// that answered `reply` after `elapsed`.
    pub fn record(&self, command: Option<usize>, elapsed: Duration, reply: &Frame) {
        self.commands_processed.fetch_add(1, Ordering::Relaxed);
        let error = match reply {
            Frame::Error(text) => Some(text.as_str()),
            _ => None,
        };
        if error.is_some() {
            self.error_replies.fetch_add(1, Ordering::Relaxed);
        }
        let Some(counters) = command.and_then(|index| self.commands.get(index)) else {
            return;
        };
        let rejected = error.is_some_and(|text| {
            text.starts_with("ERR wrong number of arguments") || text.starts_with("NOAUTH")
        });
        if rejected {
            counters.rejected_calls.fetch_add(1, Ordering::Relaxed);
        } else {
            counters.calls.fetch_add(1, Ordering::Relaxed);
            let micros = elapsed.as_micros() as u64;
            counters.usec.fetch_add(micros, Ordering::Relaxed);
            let bucket = LATENCY_BOUNDS_US.partition_point(|bound| *bound < micros);
            counters.latency[bucket].fetch_add(1, Ordering::Relaxed);
            if error.is_some() {
                counters.failed_calls.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// CONFIG RESETSTAT: every counter back to zero.
    pub fn reset(&self) {
        let per_command = self.commands.iter().flat_map(|counters| {
            [
                &counters.calls,
                &counters.usec,
                &counters.rejected_calls,
                &counters.failed_calls,
            ]
        });
        let buckets = self
            .commands
            .iter()
            .flat_map(|counters| counters.latency.iter());
        for counter in per_command.chain(buckets).chain([
            &self.connections_received,
            &self.rejected_connections,
            &self.commands_processed,
            &self.error_replies,
            &self.net_input_bytes,
            &self.net_output_bytes,
        ]) {
            counter.store(0, Ordering::Relaxed);
        }
    }

    /// The counters of command `name`, if it ran or was refused.
    pub fn command(&self, name: &str) -> Option<CommandStat> {
        let index = crate::commands::index_of(name)?;
        let stat = self.commands[index].load();
        (stat != CommandStat::default()).then_some(stat)
    }

    /// The `# Stats` section's fields.
    pub fn stats_section(&self) -> String {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        format!(
            "# Stats\r\ntotal_connections_received:{}\r\ntotal_commands_processed:{}\r\n\
             rejected_connections:{}\r\ntotal_error_replies:{}\r\n\
             total_net_input_bytes:{}\r\ntotal_net_output_bytes:{}\r\n",
            load(&self.connections_received),
            load(&self.commands_processed),
            load(&self.rejected_connections),
            load(&self.error_replies),
            load(&self.net_input_bytes),
            load(&self.net_output_bytes),
        )
    }

    /// The `# Commandstats` section, in Redis 7's format: the commands that
    /// ran or were refused, by name.
    pub fn commandstats_section(&self) -> String {
        let mut text = String::from("# Commandstats\r\n");
        let mut used: Vec<(&str, CommandStat)> = COMMANDS
            .iter()
            .zip(&self.commands)
            .map(|(spec, counters)| (spec.name, counters.load()))
            .filter(|(_, stat)| *stat != CommandStat::default())
            .collect();
        used.sort_unstable_by_key(|(name, _)| *name);
        for (name, stat) in used {
            let per_call = if stat.calls == 0 {
                0.0
            } else {
                stat.usec as f64 / stat.calls as f64
            };
            text.push_str(&format!(
                "cmdstat_{name}:calls={},usec={},usec_per_call={per_call:.2},rejected_calls={},failed_calls={}\r\n",
                stat.calls, stat.usec, stat.rejected_calls, stat.failed_calls
            ));
        }
        text
    }
}

/// The `# Memory` section: the process's resident memory (Redis's
/// `used_memory` counts its allocator's bytes; the gateway reports what it
/// holds resident, under both names).
pub fn memory_section() -> String {
    let resident = resident_bytes().unwrap_or(0);
    format!(
        "# Memory\r\nused_memory:{resident}\r\nused_memory_human:{}\r\n\
         used_memory_rss:{resident}\r\nmaxmemory:0\r\n",
        human(resident)
    )
}

/// The `# CPU` section: the process's CPU time in seconds.
pub fn cpu_section() -> String {
    // SAFETY: passes a pointer to a live rusage struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_SELF is always valid.
    let ok = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } == 0;
    let seconds = |time: libc::timeval| {
        if ok {
            format!("{}.{:06}", time.tv_sec, time.tv_usec)
        } else {
            "0.000000".into()
        }
    };
    format!(
        "# CPU\r\nused_cpu_sys:{}\r\nused_cpu_user:{}\r\n",
        seconds(usage.ru_stime),
        seconds(usage.ru_utime)
    )
}

fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}

/// Bytes as Redis's `*_human` fields write them.
fn human(bytes: u64) -> String {
    let bytes = bytes as f64;
    if bytes < 1024.0 {
        format!("{bytes}B")
    } else if bytes < 1024.0 * 1024.0 {
        format!("{:.2}K", bytes / 1024.0)
    } else if bytes < 1024.0 * 1024.0 * 1024.0 {
        format!("{:.2}M", bytes / (1024.0 * 1024.0))
    } else {
        format!("{:.2}G", bytes / (1024.0 * 1024.0 * 1024.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_counted_as_run_rejected_or_failed() {
        let stats = Stats::default();
        let took = Duration::from_micros(10);
        let index = |name| crate::commands::index_of(name);
        stats.record(index("GET"), took, &Frame::Nil);
        stats.record(index("get"), took, &Frame::bulk("v"));
        stats.record(
            index("get"),
            took,
            &Frame::error("ERR wrong number of arguments for 'get' command"),
        );
        stats.record(
            index("incr"),
            took,
            &Frame::error("ERR value is not an integer or out of range"),
        );
        stats.record(
            index("nosuch"),
            took,
            &Frame::error("ERR unknown command 'nosuch'"),
        );
        assert_eq!(
            stats.command("get"),
            Some(CommandStat {
                calls: 2,
                usec: 20,
                rejected_calls: 1,
                failed_calls: 0
            })
        );
        assert_eq!(stats.command("incr").map(|s| s.failed_calls), Some(1));
        assert_eq!(stats.command("nosuch"), None);
        assert_eq!(stats.command("set"), None, "never ran");
        let section = stats.commandstats_section();
        assert!(
            section.contains(
                "cmdstat_get:calls=2,usec=20,usec_per_call=10.00,rejected_calls=1,failed_calls=0\r\n"
            ),
            "{section}"
        );
        assert!(
            stats
                .stats_section()
                .contains("total_commands_processed:5\r\n")
        );
        assert!(stats.stats_section().contains("total_error_replies:3\r\n"));
        stats.reset();
        assert_eq!(stats.command("get"), None);
        assert!(
            stats
                .stats_section()
                .contains("total_commands_processed:0\r\n")
        );
    }

    #[test]
    fn memory_and_cpu_are_the_process_s_own() {
        let memory = memory_section();
        let resident: u64 = memory
            .lines()
            .find_map(|line| line.strip_prefix("used_memory_rss:"))
            .and_then(|value| value.parse().ok())
            .unwrap();
        assert!(resident > 1 << 20, "{memory}");
        assert!(cpu_section().contains("used_cpu_user:"));
        assert_eq!(human(512), "512B");
        assert_eq!(human(3 << 20), "3.00M");
    }
}
