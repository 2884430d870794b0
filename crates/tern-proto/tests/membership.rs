//! A replica's membership under meta (`tern_proto::membership`), driven
//! through the situations the shell meets: restarts with and without data,
//! being taken out and appended back, state transfers that come from too
//! early, chains that change under a transfer, and the lease race fixed
//! before this core existed (a lease renewed together with a map that takes
//! the replica out).

use std::net::{Ipv4Addr, SocketAddrV4};

use tern_proto::membership::{Action, Membership, Role, Start};
use tern_proto::replica::ReplicaConfig;

fn replica(last: u8) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, last), 7100)
}

const ME: u8 = 3;

/// This replica's place in a chain of `chain` at `epoch`, if it is in it.
fn place(epoch: u32, chain: &[u8]) -> Option<ReplicaConfig> {
    let chain: Vec<SocketAddrV4> = chain.iter().map(|last| replica(*last)).collect();
    let position = chain.iter().position(|address| *address == replica(ME))?;
    Some(ReplicaConfig {
        shard: 0,
        epoch,
        chain,
        position,
        coordinator: replica(100),
        early_commit: 0,
        fanout: false,
    })
}

/// A lease as the heartbeat thread holds it: granted with the map of
/// `granted_with`, valid only for a process that has acted on that map.
fn lease(granted_with: u64) -> impl Fn(u64) -> bool {
    move |acted_on| acted_on >= granted_with
}

#[test]
fn a_restarted_member_resumes_only_from_its_own_data() {
    let in_chain = place(1, &[1, 2, ME]);
    // With its log: it resumes.
    let (member, start) = Membership::start(7, in_chain.clone(), true, Some(true));
    assert_eq!(start, Start::Resume);
    assert!(member.is_member());
    // A brand-new cluster (never a member, its chain never reconfigured):
    // it starts empty, even when the map has moved on meanwhile (the
    // coordinator's resequencing).
    let (_, start) = Membership::start(1, in_chain.clone(), false, Some(false));
    assert_eq!(start, Start::Resume);
    let (_, start) = Membership::start(2, in_chain.clone(), false, Some(false));
    assert_eq!(start, Start::Resume);
    // Never marked but in a chain reconfigured since: it asks to leave;
    // without a data directory, only the first map counts as fresh.
    let (_, start) = Membership::start(4, place(3, &[1, 2, ME]), false, Some(false));
    assert_eq!(start, Start::AskToLeave);
    let (_, start) = Membership::start(2, in_chain.clone(), false, None);
    assert_eq!(start, Start::AskToLeave);
    let (_, start) = Membership::start(1, in_chain.clone(), false, None);
    assert_eq!(start, Start::Resume);
    // Without its data in a running cluster: it asks to be taken out...
    let (mut member, start) = Membership::start(7, in_chain.clone(), false, Some(true));
    assert_eq!(start, Start::AskToLeave);
    assert_eq!(member.left(true), vec![Action::DropData]);
    assert!(member.is_spare());
    // ...unless it is the last replica, which serves empty (data lost).
    let (mut last, _) = Membership::start(7, place(1, &[ME]), false, Some(true));
    assert!(last.left(false).is_empty());
    assert!(last.is_member());
    // Outside every chain: a spare.
    let (spare, start) = Membership::start(7, None, true, Some(true));
    assert_eq!(start, Start::Spare);
    assert!(spare.is_spare());
}

#[test]
fn a_member_follows_its_chain_and_drops_its_data_when_taken_out() {
    let (mut member, _) = Membership::start(2, place(1, &[1, 2, ME]), true, Some(true));
    assert!(
        member.on_map(2, place(1, &[1, 2, ME])).is_empty(),
        "unchanged"
    );
    // The head failed: a new place, installed in the replica.
    assert_eq!(
        member.on_map(3, place(2, &[2, ME])),
        vec![Action::Reconfigure(place(2, &[2, ME]).unwrap())]
    );
    assert!(member.is_member());
    // Taken out: its data is outdated from now on.
    assert_eq!(member.on_map(4, place(3, &[2])), vec![Action::DropData]);
    assert!(member.is_spare());
    assert!(member.fenced(lease(4)));
    // A later map without it changes nothing more.
    assert!(member.on_map(5, None).is_empty());
}

#[test]
fn a_spare_joins_from_a_state_taken_at_its_epoch_or_later() {
    let (mut spare, _) = Membership::start(4, None, false, Some(false));
    let appended = place(5, &[1, 2, ME]);
    assert_eq!(
        spare.on_map(5, appended.clone()),
        vec![Action::StartJoin(appended.clone().unwrap())]
    );
    assert!(matches!(spare.role(), Role::Joining { .. }));
    assert!(spare.fenced(lease(5)), "a joiner serves nothing");
    // The predecessor answered before it had the new map: fetch again.
    assert_eq!(
        spare.on_snapshot(4),
        vec![Action::StartJoin(appended.clone().unwrap())]
    );
    // At the epoch: load it and become a member.
    assert_eq!(
        spare.on_snapshot(5),
        vec![Action::LoadSnapshot(appended.unwrap())]
    );
    assert!(spare.is_member());
    assert!(!spare.fenced(lease(5)));
    // A late answer of a cancelled transfer is ignored.
    assert!(spare.on_snapshot(5).is_empty());
}

#[test]
fn a_join_restarts_when_the_chain_changes_under_it_and_goes_on_for_a_new_epoch() {
    let (mut spare, _) = Membership::start(4, None, false, Some(false));
    spare.on_map(5, place(5, &[1, 2, ME]));
    // Only the epoch moved (a coordinator change): same predecessor, and the
    // state must now come from the new epoch.
    assert_eq!(
        spare.on_map(6, place(6, &[1, 2, ME])),
        vec![Action::Reconfigure(place(6, &[1, 2, ME]).unwrap())]
    );
    assert_eq!(
        spare.on_snapshot(5),
        vec![Action::StartJoin(place(6, &[1, 2, ME]).unwrap())],
        "a state from before the new epoch is not enough"
    );
    // The predecessor failed: fetch from the new one.
    assert_eq!(
        spare.on_map(7, place(7, &[1, ME])),
        vec![Action::StartJoin(place(7, &[1, ME]).unwrap())]
    );
    // Taken out while joining: the transfer stops, the data goes.
    assert_eq!(
        spare.on_map(8, place(8, &[1])),
        vec![Action::CancelJoin, Action::DropData]
    );
    assert!(spare.is_spare());
}

#[test]
fn a_lease_renewed_with_a_map_that_takes_the_replica_out_never_lets_it_serve() {
    // The heartbeat thread has a fresh lease that came with map 6, in which
    // this replica is no longer in the chain; the serve loop has not acted
    // on map 6 yet. Counting the lease for map 5 would let it serve one
    // more batch as a member.
    let (mut member, _) = Membership::start(5, place(1, &[1, 2, ME]), true, Some(true));
    assert!(!member.fenced(lease(5)));
    assert!(
        member.fenced(lease(6)),
        "a lease for map 6 does not cover map 5"
    );
    member.on_map(6, place(2, &[1, 2]));
    assert!(member.fenced(lease(6)), "out of the chain: fenced anyway");
}

#[test]
fn a_map_version_is_acted_on_only_once_it_is_seen() {
    let (mut member, _) = Membership::start(5, place(1, &[1, 2, ME]), true, Some(true));
    assert_eq!(member.acted_on(), 5);
    member.on_map(7, place(2, &[2, ME]));
    assert_eq!(member.acted_on(), 7);
    // A late, older map is ignored: it never moves the replica back.
    assert!(member.on_map(6, place(1, &[1, 2, ME])).is_empty());
    assert_eq!(member.acted_on(), 7);
}

#[test]
fn a_spare_in_a_chain_born_with_it_serves_from_empty_and_any_later_chain_is_joined() {
    // A new shard's chain (AddShard): epoch 1, every member a spare.
    let (mut member, _) = Membership::start(5, None, false, Some(false));
    let born = place(1, &[ME, 4]).unwrap();
    assert_eq!(
        member.on_map(6, Some(born.clone())),
        vec![Action::StartEmpty(born)]
    );
    assert!(member.is_member());
    assert!(!member.fenced(lease(6)));
    // A spare appended to an existing chain (an epoch above 1) fetches the
    // chain's state as before.
    let (mut spare, _) = Membership::start(5, None, false, Some(false));
    let appended = place(2, &[1, 2, ME]).unwrap();
    assert_eq!(
        spare.on_map(6, Some(appended.clone())),
        vec![Action::StartJoin(appended)]
    );
}
