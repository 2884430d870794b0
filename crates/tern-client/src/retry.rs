//! The one retry policy of every Tern client, without I/O: the blocking
//! [`crate::Client`] (which the CLI, the gateway and the chaos workload use)
//! and the [`crate::Pipeline`] both ask it what a reply or a silent attempt
//! means for a request and when to send it again, so they cannot drift.
//!
//! Every resend carries the same request id, so a retried write is applied
//! once (DESIGN rule 6), whatever route it finally takes.

use std::time::{Duration, Instant};

use tern_wire::Status;

use crate::ClientOptions;

/// The first pause after a TRY_AGAIN or a reroute that changed nothing;
/// each further one doubles, up to [`BACKOFF_MAX`].
pub const BACKOFF_MIN: Duration = Duration::from_millis(1);
/// The longest pause between two attempts of one request.
pub const BACKOFF_MAX: Duration = Duration::from_millis(50);

/// The longest pause given to a refuser whose map is behind the request's
/// before the map is fetched anyway (pauses of 1, 2, 4 and 8 ms: 15 ms).
const BEHIND_BACKOFF_MAX: Duration = Duration::from_millis(16);

/// What to do with a request now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A final answer for the caller (STALE_EPOCH included, when there is
    /// no map from meta to follow).
    Done,
    /// The receiver is busy (a full window, a recovering coordinator, a
    /// replica behind the read's stamp): send the same datagram again after
    /// this pause.
    RetryAfter(Duration),
    /// The route may be stale (STALE_EPOCH, or a silent attempt, with a map
    /// from meta to follow): fetch the map, point the request at its shard
    /// as the map has it, then ask [`Retry::after_reroute`].
    Reroute,
    /// No answer in time and no map to follow: send it again now.
    Resend,
    /// The deadline passed: give up (a write's outcome is then unknown).
    Expired,
}

/// The retry state of one request.
#[derive(Clone, Copy, Debug)]
pub struct Retry {
    deadline: Instant,
    attempts: u32,
    backoff: Duration,
    /// Routed by the map, and the map comes from meta.
    follows_map: bool,
    /// LOCKED is the answer (a PREPARE's no), not a reason to wait.
    locked_is_answer: bool,
}

impl Retry {
    /// A request first sent at `now`. `follows_map`: it is routed by the
    /// cluster map (not sent to a named process) and the map comes from
    /// meta, so a stale route can be refreshed.
    pub fn new(now: Instant, options: &ClientOptions, follows_map: bool) -> Retry {
        Retry {
            deadline: now + options.deadline,
            attempts: 0,
            backoff: BACKOFF_MIN,
            follows_map,
            locked_is_answer: false,
        }
    }

    /// For a request whose LOCKED reply is its answer (a PREPARE, refused
    /// for good): returned as it is, not waited out.
    pub fn locked_is_answer(self, answer: bool) -> Retry {
        Retry {
            locked_is_answer: answer,
            ..self
        }
    }

    /// Counts an attempt (the first send included).
    pub fn sent(&mut self) {
        self.attempts += 1;
    }

    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    pub fn expired(&self, now: Instant) -> bool {
        now >= self.deadline
    }

    /// The request's reply says `status`.
    pub fn on_reply(&mut self, now: Instant, status: Status) -> Verdict {
        let busy =
            status == Status::TryAgain || (status == Status::Locked && !self.locked_is_answer);
        if self.expired(now) && busy {
            return Verdict::Expired;
        }
        match status {
            // A key a transaction holds: free once it is settled.
            _ if busy => Verdict::RetryAfter(self.pause(now)),
            // The map changed: a chain or coordinator (another epoch), or
            // the slot's shard (a migration).
            Status::StaleEpoch | Status::WrongShard if self.follows_map => Verdict::Reroute,
            _ => Verdict::Done,
        }
    }

    /// An attempt went unanswered for the attempt timeout.
    pub fn on_silence(&mut self, now: Instant) -> Verdict {
        if self.expired(now) {
            Verdict::Expired
        } else if self.follows_map {
            // The coordinator may have failed over: the map says.
            Verdict::Reroute
        } else {
            Verdict::Resend
        }
    }

    /// After a reroute: `rerouted` when the request now goes to another
    /// coordinator or at another epoch, `map_behind` when the map fetched is
    /// older than the one a refusal named. A new route is tried at once;
    /// the same route, or a map that is not new enough, after a pause (meta
    /// or the replicas are mid-reconfiguration).
    pub fn after_reroute(
        &mut self,
        now: Instant,
        rerouted: bool,
        map_behind: bool,
    ) -> Option<Duration> {
        (!rerouted || map_behind).then(|| self.pause(now))
    }

    /// A STALE_EPOCH or WRONG_SHARD refusal whose sender acts on map
    /// `refuser_map` (its MAP_VERSION extension) for a request routed by
    /// map `routed_by`: when the refuser's map is the older one, it is the
    /// refuser that is behind (it learns the map in a moment), so the same
    /// route is retried after a pause instead of fetching the map, for a few
    /// short pauses (a refuser cut off from meta never catches up: then the
    /// map is fetched after all, in case it moved the shard again). The
    /// pause, or None when the map should be fetched.
    pub fn refuser_behind(
        &mut self,
        now: Instant,
        refuser_map: Option<u64>,
        routed_by: u64,
    ) -> Option<Duration> {
        (self.backoff < BEHIND_BACKOFF_MAX
            && refuser_map.is_some_and(|version| version < routed_by))
        .then(|| self.pause(now))
    }

    fn pause(&mut self, now: Instant) -> Duration {
        let pause = self
            .backoff
            .min(self.deadline.saturating_duration_since(now));
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        pause
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> ClientOptions {
        ClientOptions {
            attempt_timeout: Duration::from_millis(200),
            deadline: Duration::from_secs(3),
            ..ClientOptions::default()
        }
    }

    #[test]
    fn a_busy_receiver_is_retried_with_a_doubling_pause_up_to_the_limit() {
        let start = Instant::now();
        let mut retry = Retry::new(start, &options(), true);
        let pauses: Vec<Verdict> = (0..8)
            .map(|_| retry.on_reply(start, Status::TryAgain))
            .collect();
        let expected: Vec<Verdict> = [1, 2, 4, 8, 16, 32, 50, 50]
            .into_iter()
            .map(|ms| Verdict::RetryAfter(Duration::from_millis(ms)))
            .collect();
        assert_eq!(pauses, expected);
        // Never past the deadline.
        let late = start + Duration::from_millis(2_990);
        assert_eq!(
            retry.on_reply(late, Status::TryAgain),
            Verdict::RetryAfter(Duration::from_millis(10))
        );
        assert_eq!(
            retry.on_reply(start + Duration::from_secs(3), Status::TryAgain),
            Verdict::Expired
        );
    }

    #[test]
    fn a_refuser_with_an_older_map_is_retried_after_a_pause_without_fetching_the_map() {
        let now = Instant::now();
        let mut retry = Retry::new(now, &options(), true);
        assert_eq!(retry.refuser_behind(now, Some(4), 5), Some(BACKOFF_MIN));
        assert_eq!(retry.refuser_behind(now, Some(4), 5), Some(BACKOFF_MIN * 2));
        assert_eq!(retry.refuser_behind(now, Some(4), 5), Some(BACKOFF_MIN * 4));
        assert_eq!(retry.refuser_behind(now, Some(4), 5), Some(BACKOFF_MIN * 8));
        assert_eq!(
            retry.refuser_behind(now, Some(4), 5),
            None,
            "behind for too long: fetch after all"
        );
        let mut retry = Retry::new(now, &options(), true);
        assert_eq!(retry.refuser_behind(now, Some(5), 5), None, "as new: fetch");
        assert_eq!(retry.refuser_behind(now, Some(6), 5), None, "newer: fetch");
        assert_eq!(retry.refuser_behind(now, None, 5), None, "unknown: fetch");
    }

    #[test]
    fn a_stale_epoch_or_a_wrong_shard_reroutes_only_a_request_that_follows_a_map_from_meta() {
        let now = Instant::now();
        let mut routed = Retry::new(now, &options(), true);
        let mut named = Retry::new(now, &options(), false);
        for status in [Status::StaleEpoch, Status::WrongShard] {
            assert_eq!(routed.on_reply(now, status), Verdict::Reroute);
            assert_eq!(named.on_reply(now, status), Verdict::Done);
        }
        for status in [
            Status::Ok,
            Status::NotFound,
            Status::CasMismatch,
            Status::BadKeyHash,
        ] {
            assert_eq!(routed.on_reply(now, status), Verdict::Done, "{status:?}");
        }
    }

    #[test]
    fn silence_reroutes_a_routed_request_and_resends_a_named_one_until_the_deadline() {
        let now = Instant::now();
        let mut routed = Retry::new(now, &options(), true);
        let mut named = Retry::new(now, &options(), false);
        assert_eq!(routed.on_silence(now), Verdict::Reroute);
        assert_eq!(named.on_silence(now), Verdict::Resend);
        let after = now + Duration::from_secs(3);
        assert_eq!(routed.on_silence(after), Verdict::Expired);
        assert_eq!(named.on_silence(after), Verdict::Expired);
    }

    #[test]
    fn a_new_route_is_tried_at_once_and_an_unchanged_or_old_map_after_a_pause() {
        let now = Instant::now();
        let mut retry = Retry::new(now, &options(), true);
        assert_eq!(retry.after_reroute(now, true, false), None);
        assert_eq!(
            retry.after_reroute(now, false, false),
            Some(Duration::from_millis(1))
        );
        assert_eq!(
            retry.after_reroute(now, true, true),
            Some(Duration::from_millis(2)),
            "the map fetched is older than the refusal's"
        );
    }
}
