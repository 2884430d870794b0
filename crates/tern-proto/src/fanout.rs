//! Fan-out replication at the replicas (`--replication fanout`).
//!
//! The head decides each write as in a chain, applies it, and sends the
//! decided record to every other replica at once; every replica, the head
//! included, acknowledges what it applied to the coordinator, which
//! completes a write once all of them have (`coordinator::fanout`). The
//! others (leaves) apply in seq order, ask the head for gaps, and pass
//! nothing on.
//!
//! A chain keeps a prefix property for free: every replica holds at least
//! what its successors hold, so a new head has every write any survivor
//! has. A fan-out does not: the leaves apply prefixes of the same sequence
//! of decided records, but a leaf may hold a record another lacks. So a
//! replica that becomes the head of a fan-out first **syncs**: it asks
//! every leaf how far it got and for the records after its own, applies
//! them as decided (they carry the failed head's decisions), and decides
//! nothing new until every leaf of the current chain has reported and it
//! holds the most any of them has. Writes the coordinator sends meanwhile
//! are dropped and resent by it. A record no survivor holds was never
//! acknowledged by every replica, so never answered: its client sends it
//! again.

use std::collections::BTreeMap;
use std::net::SocketAddrV4;

/// A new fan-out head's sync with the leaves of its chain.
#[derive(Clone, Debug)]
pub(crate) struct HeadSync {
    /// Each leaf's applied seq, once it has reported.
    reported: BTreeMap<SocketAddrV4, Option<u64>>,
}

impl HeadSync {
    pub(crate) fn new(leaves: &[SocketAddrV4]) -> HeadSync {
        HeadSync {
            reported: leaves.iter().map(|&leaf| (leaf, None)).collect(),
        }
    }

    /// Records a leaf's report of how far it applied; false for a sender
    /// that is not a leaf of this sync.
    pub(crate) fn report(&mut self, leaf: SocketAddrV4, applied: u64) -> bool {
        match self.reported.get_mut(&leaf) {
            Some(reported) => {
                *reported = Some(reported.map_or(applied, |before| before.max(applied)));
                true
            }
            None => false,
        }
    }

    /// The leaves to ask (again) for their progress and their records
    /// after `applied`: those that have not reported, and those that hold
    /// more than the head.
    pub(crate) fn to_ask(&self, applied: u64) -> impl Iterator<Item = SocketAddrV4> + '_ {
        self.reported
            .iter()
            .filter(move |(_, reported)| reported.is_none_or(|theirs| theirs > applied))
            .map(|(&leaf, _)| leaf)
    }

    /// The leaf that holds the most (for values fetched out of band).
    pub(crate) fn richest(&self) -> Option<SocketAddrV4> {
        self.reported
            .iter()
            .filter_map(|(&leaf, reported)| Some((reported.as_ref()?, leaf)))
            .max()
            .map(|(_, leaf)| leaf)
    }

    /// Whether every leaf reported and the head holds what each has.
    pub(crate) fn done(&self, applied: u64) -> bool {
        self.to_ask(applied).next().is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn leaf(n: u8) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, n), 7100)
    }

    #[test]
    fn a_sync_ends_once_every_leaf_reported_and_the_head_holds_the_most() {
        let mut sync = HeadSync::new(&[leaf(2), leaf(3)]);
        assert!(!sync.done(5));
        assert!(sync.report(leaf(2), 4));
        assert!(!sync.report(leaf(9), 4), "not a leaf of this chain");
        assert_eq!(sync.to_ask(5).collect::<Vec<_>>(), vec![leaf(3)]);
        assert!(sync.report(leaf(3), 7));
        assert_eq!(sync.richest(), Some(leaf(3)));
        assert!(!sync.done(5), "leaf 3 holds 6 and 7");
        assert_eq!(sync.to_ask(5).collect::<Vec<_>>(), vec![leaf(3)]);
        assert!(sync.done(7));
        assert!(
            HeadSync::new(&[]).done(0),
            "a chain of one has nobody to ask"
        );
    }
}
