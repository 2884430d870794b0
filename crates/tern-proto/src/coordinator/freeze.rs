//! Slot ranges a migration holds still at their source coordinator (FREEZE).
//!
//! A migration freezes a group of slots, waits until none of its writes is
//! in flight, copies the group to the destination and hands it off. While
//! frozen, the group's writes are answered TRY_AGAIN (the client retries, so
//! nothing fails); its reads go on, since this shard still has every
//! committed write, until the migration holds reads too, just before the
//! destination takes over. A hold lasts as long as the request asked (at
//! most `freeze::HOLD_MAX_MS`) and the migration renews it while it works,
//! so a migration that dies lets go by itself.
//!
//! The kernel's bitmap of served slots leaves frozen slots out, so their
//! requests come up here: the fast path never needs to know about holds.

use std::net::SocketAddrV4;
use std::time::Duration;

use tern_wire::{DIRTY_SLOTS, Header, Message, Op, SLOT_COUNT, Status, freeze, slot_of, slots};

use super::{ShardCoordinator, ShardState};
use crate::{Outbox, Time};

/// Holds one shard keeps at once (`freeze::HOLDS_MAX`).
pub const FREEZES_MAX: usize = freeze::HOLDS_MAX;

/// One held slot range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Freeze {
    range: [u32; 2],
    /// `freeze::WRITES`, `ALL` or `MOVED`.
    mode: u8,
    /// For `MOVED`: the map version its refusals name.
    map_version: u64,
    until: Time,
}

impl<S: ShardState> ShardCoordinator<S> {
    /// FREEZE: holds (or releases) the slot range in `argument` and answers
    /// OK once none of its writes is in flight, with `seq` = `next_seq` and
    /// a `freeze::Answer` as the value.
    pub(super) fn freeze(
        &mut self,
        now: Time,
        from: SocketAddrV4,
        message: &Message<'_>,
        outbox: &mut Outbox,
    ) {
        let header = &message.header;
        let [start, end] = header.slot_range();
        let Some(request) =
            freeze::Request::decode(message.value).filter(|_| start < end && end <= SLOT_COUNT)
        else {
            return self.answer_freeze(from, header, Status::Malformed, outbox);
        };
        let renewed = self.freezes.iter().any(|held| held.range == [start, end]);
        if request.mode != freeze::RELEASE && !renewed && self.freezes.len() >= FREEZES_MAX {
            return self.answer_freeze(from, header, Status::TryAgain, outbox);
        }
        if request.mode == freeze::RELEASE {
            // Every hold over the range lets go of it; one that covers more
            // keeps the rest (the ownership-first baseline releases a slot
            // it pulled ahead out of a held group).
            let mut kept = Vec::with_capacity(self.freezes.len() + 1);
            for held in &self.freezes {
                let mut rest = vec![held.range];
                slots::remove(&mut rest, [start, end]);
                kept.extend(rest.into_iter().map(|range| Freeze { range, ..*held }));
            }
            if kept.len() > FREEZES_MAX {
                return self.answer_freeze(from, header, Status::TryAgain, outbox);
            }
            self.freezes = kept;
        } else {
            self.freezes.retain(|held| held.range != [start, end]);
            self.freezes.push(Freeze {
                range: [start, end],
                mode: request.mode,
                map_version: request.map_version,
                until: now + Duration::from_millis(u64::from(request.hold_ms)),
            });
        }
        self.install_slots();
        let status = if request.mode == freeze::RELEASE || self.drained([start, end]) {
            Status::Ok
        } else {
            Status::TryAgain
        };
        self.answer_freeze(from, header, status, outbox);
    }

    fn answer_freeze(
        &mut self,
        to: SocketAddrV4,
        received: &Header,
        status: Status,
        outbox: &mut Outbox,
    ) {
        let mut reply = Header::new(Op::Reply, self.config.shard, self.config.epoch);
        reply.status = status as u8;
        reply.client_id = received.client_id;
        reply.request_id = received.request_id;
        reply.seq.set(self.state.next_seq());
        reply.commit_seq.set(self.state.commit_seq());
        reply.argument = received.argument;
        let answer = freeze::Answer {
            incarnation: self.config.incarnation,
            wanted: std::mem::take(&mut self.wanted),
        };
        outbox.push(to, &reply, &[], &answer.encode());
    }

    /// Whether no write of a slot of `range` is in flight (each slot owns
    /// the dirty entries `slot + k * SLOT_COUNT`) and no transaction
    /// across shards holds a key of it (its locks stay at this shard).
    fn drained(&self, [start, end]: [u32; 2]) -> bool {
        !self.state.all_dirty()
            && !self.holds_any_of([start, end])
            && (start..end).all(|slot| {
                (slot..DIRTY_SLOTS)
                    .step_by(SLOT_COUNT as usize)
                    .all(|index| self.state.dirty_count(index) == 0)
            })
    }

    /// This shard now acts on map `version`: a MOVED hold from a hand-off
    /// in a map no newer has done its work (it only bridged the time until
    /// this coordinator had that map; its configuration says where the
    /// slots are now) and goes. Kept until it ran out, it would refuse a
    /// range that came back to this shard meanwhile (moved away and back
    /// within the hold), sending its clients round in circles.
    pub(super) fn acted_on_map(&mut self, version: u64) {
        self.map_version = version;
        let before = self.freezes.len();
        self.freezes
            .retain(|held| held.mode != freeze::MOVED || held.map_version > version);
        if self.freezes.len() != before {
            self.install_slots();
        }
    }

    /// Lets go of holds whose time is up.
    pub(super) fn expire_freezes(&mut self, now: Time) {
        let before = self.freezes.len();
        self.freezes.retain(|held| held.until > now);
        if self.freezes.len() != before {
            self.install_slots();
        }
    }

    /// Writes the slots served to the shared bitmap: those of the
    /// configuration, less the frozen ones (whose requests come up here).
    pub(super) fn install_slots(&self) {
        let mut served = self.config.slots.clone();
        for held in &self.freezes {
            slots::remove(&mut served, held.range);
        }
        self.state.set_slots(&served);
    }

    /// Why a request for a key cannot be served here now: WRONG_SHARD for
    /// a slot this shard does not serve (or whose hand-off a migration
    /// announced ahead of the map), TRY_AGAIN for one a migration holds;
    /// None to serve it; with the map version a WRONG_SHARD names.
    /// Checked against the shared bitmap first, so only requests the fast
    /// path would hand up get past it.
    pub(super) fn refusal_for_slot(&mut self, op: Op, key_hash: u32) -> Option<(Status, u64)> {
        let slot = slot_of(key_hash);
        if op.is_any_slot() || self.state.serves_slot(slot) {
            return None;
        }
        if !slots::contains(&self.config.slots, slot) {
            self.counters.wrong_slot += 1;
            self.map_doubted = true;
            return Some((Status::WrongShard, self.map_version));
        }
        let hold = self
            .freezes
            .iter()
            .find(|held| (held.range[0]..held.range[1]).contains(&slot))?;
        match hold.mode {
            freeze::WRITES if op == Op::Get => None,
            freeze::MOVED => {
                self.counters.wrong_slot += 1;
                self.map_doubted = true;
                Some((Status::WrongShard, self.map_version.max(hold.map_version)))
            }
            freeze::PULL => {
                let slot = slot as u16;
                if self.wanted.len() < freeze::WANTED_MAX && !self.wanted.contains(&slot) {
                    self.wanted.push(slot);
                }
                self.counters.held_frozen += 1;
                Some((Status::TryAgain, self.map_version))
            }
            _ => {
                self.counters.held_frozen += 1;
                Some((Status::TryAgain, self.map_version))
            }
        }
    }
}
