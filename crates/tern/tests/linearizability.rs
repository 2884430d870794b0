//! Concurrent clients against a real cluster of real processes, no faults;
//! the recorded history must be linearizable (DESIGN.md, "Consistency").
//! The workload and the checks are those of `tern chaos` (`--no-faults`):
//! 10 clients, GET 50% / PUT 30% / CAS 20% on two keys per shard, 4 s.

mod common;

/// The number after `label` in the report, e.g. "operations: 1234".
fn figure(report: &str, label: &str) -> u64 {
    let after = report
        .split(label)
        .nth(1)
        .unwrap_or_else(|| panic!("no {label:?} in:\n{report}"));
    after
        .trim_start()
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

fn assert_linearizable_under_contention(shards: u32, mode: &str, topology: &str) {
    assert_linearizable_committing(shards, mode, topology, "chain");
}

fn assert_linearizable_committing(shards: u32, mode: &str, topology: &str, commit: &str) {
    assert_linearizable_replicating(shards, mode, topology, ("chain", commit));
}

fn assert_linearizable_replicating(
    shards: u32,
    mode: &str,
    topology: &str,
    (replication, commit): (&str, &str),
) {
    let shards = shards.to_string();
    let output = common::run_tern(&[
        "chaos",
        "--replication",
        replication,
        "--commit",
        commit,
        "--no-faults",
        "--duration",
        "4s",
        "--clients",
        "10",
        "--keys-per-shard",
        "2",
        "--shards",
        &shards,
        "--mode",
        mode,
        "--topology",
        topology,
    ]);
    let report = String::from_utf8_lossy(&output.stdout).to_string();
    eprintln!("{report}{}", String::from_utf8_lossy(&output.stderr));
    assert!(
        output.status.success(),
        "not linearizable, or lost writes (replay with the seed above)"
    );
    assert!(report.contains("linearizable: yes") && report.contains("acknowledged writes lost: 0"));
    // The workload must really contend, or the check proves little.
    assert!(
        figure(&report, "operations:") > 2_000,
        "too few operations to mean anything"
    );
    assert!(figure(&report, "contention:") > 0, "no CAS won");
    assert!(figure(&report, "CAS swapped,") > 0, "no CAS lost a race");
    assert!(
        figure(&report, "CAS mismatched,") > 10,
        "reads did not observe concurrent writes"
    );
}

#[test]
fn one_shard_three_replicas_is_linearizable_under_contention() {
    assert_linearizable_under_contention(1, "user", "loopback");
}

#[test]
fn three_shards_three_replicas_is_linearizable_under_contention() {
    assert_linearizable_under_contention(3, "user", "loopback");
}

/// Early commit (answered once head and middle hold a write): reads of
/// dirty keys go to the middle, which must never answer older than an
/// acknowledged write.
#[test]
fn one_shard_three_replicas_committing_early_is_linearizable_under_contention() {
    assert_linearizable_committing(1, "user", "loopback", "early");
}

/// The same in the kernel: early acknowledgements answered by the XDP
/// program, dirty reads sent to the middle by it.
#[test]
fn one_shard_three_replicas_committing_early_with_the_xdp_coordinator_is_linearizable() {
    assert_linearizable_committing(1, "xdp", "netns", "early");
}

/// Fan-out: every read stamped, every replica acknowledging.
#[test]
fn three_shards_three_replicas_in_fanout_are_linearizable_under_contention() {
    assert_linearizable_replicating(3, "user", "loopback", ("fanout", "chain"));
}

#[test]
fn three_shards_in_fanout_committing_early_are_linearizable_under_contention() {
    assert_linearizable_replicating(3, "user", "loopback", ("fanout", "early"));
}

#[test]
fn one_shard_three_replicas_in_fanout_with_the_xdp_coordinator_is_linearizable() {
    assert_linearizable_replicating(1, "xdp", "netns", ("fanout", "chain"));
}

#[test]
fn one_shard_three_replicas_with_the_xdp_coordinator_is_linearizable_under_contention() {
    assert_linearizable_under_contention(1, "xdp", "netns");
}

#[test]
fn three_shards_three_replicas_with_the_xdp_coordinator_is_linearizable_under_contention() {
    assert_linearizable_under_contention(3, "xdp", "netns");
}
