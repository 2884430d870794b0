//! Short chaos runs in `make test`: every fault kind (replica, coordinator
//! and meta-leader kills, loss, link and pairwise partitions, and slot
//! ranges moving between shards while the others strike), both
//! coordinator modes, three meta nodes and a standby coordinator; the run
//! must stay linearizable and lose no acknowledged write. The seed is
//! printed; `tern chaos --seed N` replays the choices.

mod common;

fn chaos(extra: &[&str]) {
    let mut args = vec!["chaos", "--duration", "18s"];
    args.extend_from_slice(extra);
    let output = common::run_tern(&args);
    let stdout = String::from_utf8_lossy(&output.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(
        output.status.success(),
        "chaos failed (replay with the seed above)"
    );
    assert!(stdout.contains("acknowledged writes lost: 0"));
    assert!(stdout.contains("linearizable: yes"));
    for kind in [
        "KillReplica",
        "KillCoordinator",
        "KillMeta",
        "Loss",
        "Partition",
        "PartitionPair",
        "Reshard",
    ] {
        assert!(
            stdout
                .lines()
                .any(|line| line.contains(&format!("s {kind} "))),
            "no {kind} fault injected"
        );
    }
}

#[test]
fn the_user_space_coordinator_survives_every_fault_kind() {
    chaos(&["--mode", "user"]);
}

#[test]
fn the_xdp_coordinator_survives_every_fault_kind() {
    chaos(&["--mode", "xdp"]);
}
