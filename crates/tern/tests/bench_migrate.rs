//! `tern bench migrate` end to end, small: each strategy moves its slots
//! under the workload, no request fails, and each run leaves its time
//! series and plot. The runs are long enough for a debug build on a busy
//! machine to finish its migration inside them. (The figures themselves are docs/BENCHMARKS.md's, from
//! long runs; a timed test proves nothing about speed.)

mod common;

#[test]
fn each_strategy_moves_the_slots_without_a_failed_request_and_leaves_its_series() {
    let out = tempfile::tempdir().unwrap();
    let output = common::run_tern(&[
        "bench",
        "migrate",
        "--repeat",
        "1",
        "--duration",
        "10s",
        "--migrate-at",
        "2s",
        "--records",
        "5000",
        "--slots",
        "0-511",
        "--strategies",
        "live,stop-and-copy,ownership-first",
        "--out",
        out.path().to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for strategy in ["live", "stop-and-copy", "ownership-first"] {
        let run = format!("{strategy}-writes5-round1");
        let line = stdout
            .lines()
            .find(|line| line.starts_with(&run))
            .unwrap_or_else(|| panic!("no line for {run}: {stdout}"));
        assert!(line.ends_with("| 0 failed"), "{line}");
        let series: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(out.path().join(format!("{run}.json"))).unwrap(),
        )
        .unwrap();
        assert!(series["keys"].as_u64().unwrap() > 0, "{run} moved no key");
        assert!(series["migration_s"].as_f64().unwrap() > 0.0);
        // Where the time went, for whoever reads the series.
        assert!(
            series["time_per_group"]["handing_off_ms"]
                .as_f64()
                .is_some()
        );
        assert!(series["priority_pulls"].as_u64().is_some());
        let plot = std::fs::read_to_string(out.path().join(format!("{run}.svg"))).unwrap();
        assert!(
            plot.starts_with("<svg") || plot.contains("<svg"),
            "{run}.svg"
        );
    }
}
