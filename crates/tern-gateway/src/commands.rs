//! The commands the gateway serves, with what Redis's `COMMAND` says of
//! each: arity, flags and where the keys are. The same table tells the
//! gateway which arguments are keys (for `SELECT`'s databases), so the two
//! cannot disagree.

use crate::resp::Frame;

/// One command as `COMMAND INFO` describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Spec {
    /// Lower case, as Redis names it.
    pub name: &'static str,
    /// Arguments counted with the name; negative: at least that many.
    pub arity: i64,
    pub flags: &'static [&'static str],
    /// The first and last key's position (the name is 0; last -1: up to
    /// the end) and the step between keys; 0, 0, 0 without keys.
    pub first_key: i64,
    pub last_key: i64,
    pub step: i64,
}

const fn keyless(name: &'static str, arity: i64, flags: &'static [&'static str]) -> Spec {
    Spec {
        name,
        arity,
        flags,
        first_key: 0,
        last_key: 0,
        step: 0,
    }
}

const fn one_key(name: &'static str, arity: i64, flags: &'static [&'static str]) -> Spec {
    Spec {
        name,
        arity,
        flags,
        first_key: 1,
        last_key: 1,
        step: 1,
    }
}

const fn all_keys(name: &'static str, arity: i64, flags: &'static [&'static str]) -> Spec {
    Spec {
        name,
        arity,
        flags,
        first_key: 1,
        last_key: -1,
        step: 1,
    }
}

const READ: &[&str] = &["readonly", "fast"];
const WRITE: &[&str] = &["write", "denyoom", "fast"];
const DELETE: &[&str] = &["write", "fast"];
const TRANSACTION: &[&str] = &["noscript", "loading", "stale", "fast", "allow_busy"];
const NO_AUTH: &[&str] = &[
    "noscript",
    "loading",
    "stale",
    "fast",
    "no_auth",
    "allow_busy",
];

/// Every command served, as Redis 7 describes it.
pub const COMMANDS: &[Spec] = &[
    one_key("get", 2, READ),
    one_key("set", -3, &["write", "denyoom"]),
    one_key("setnx", 3, WRITE),
    one_key("getset", 3, WRITE),
    one_key("getdel", 2, DELETE),
    one_key("setex", 4, &["write", "denyoom"]),
    one_key("setrange", 4, &["write", "denyoom"]),
    one_key("incrbyfloat", 3, WRITE),
    one_key("setbit", 4, &["write", "denyoom"]),
    one_key("getbit", 3, READ),
    one_key("bitcount", -2, &["readonly"]),
    one_key("bitpos", -3, &["readonly"]),
    Spec {
        name: "lcs",
        arity: -3,
        flags: &["readonly"],
        first_key: 1,
        last_key: 2,
        step: 1,
    },
    one_key("psetex", 4, &["write", "denyoom"]),
    one_key("getex", -2, DELETE),
    one_key("expire", -3, DELETE),
    one_key("pexpire", -3, DELETE),
    one_key("expireat", -3, DELETE),
    one_key("pexpireat", -3, DELETE),
    one_key("persist", 2, DELETE),
    one_key("ttl", 2, READ),
    one_key("pttl", 2, READ),
    one_key("expiretime", 2, READ),
    one_key("pexpiretime", 2, READ),
    one_key("getrange", 4, &["readonly"]),
    one_key("substr", 4, &["readonly"]),
    one_key("strlen", 2, READ),
    one_key("append", 3, WRITE),
    one_key("incr", 2, WRITE),
    one_key("decr", 2, WRITE),
    one_key("incrby", 3, WRITE),
    one_key("decrby", 3, WRITE),
    one_key("type", 2, READ),
    all_keys("del", -2, &["write"]),
    all_keys("unlink", -2, DELETE),
    all_keys("exists", -2, READ),
    all_keys("touch", -2, READ),
    all_keys("mget", -2, READ),
    Spec {
        name: "mset",
        arity: -3,
        flags: &["write", "denyoom"],
        first_key: 1,
        last_key: -1,
        step: 2,
    },
    Spec {
        name: "msetnx",
        arity: -3,
        flags: &["write", "denyoom"],
        first_key: 1,
        last_key: -1,
        step: 2,
    },
    keyless("keys", 2, &["readonly"]),
    keyless("scan", -2, &["readonly"]),
    keyless("randomkey", 1, &["readonly"]),
    keyless("dbsize", 1, READ),
    keyless("flushdb", -1, &["write"]),
    keyless("flushall", -1, &["write"]),
    keyless("select", 2, &["loading", "stale", "fast"]),
    keyless("ping", -1, &["fast"]),
    keyless("echo", 2, &["loading", "stale", "fast"]),
    keyless("time", 1, &["loading", "stale", "fast"]),
    keyless("info", -1, &["loading", "stale"]),
    keyless("client", -2, &[]),
    keyless("command", -1, &["loading", "stale"]),
    keyless("config", -2, &[]),
    keyless("auth", -2, NO_AUTH),
    keyless("acl", -2, &[]),
    keyless("hello", -1, NO_AUTH),
    keyless("quit", -1, NO_AUTH),
    keyless("multi", 1, TRANSACTION),
    keyless("exec", 1, &["noscript", "loading", "stale", "skip_slowlog"]),
    keyless("discard", 1, TRANSACTION),
    all_keys("watch", -2, TRANSACTION),
    keyless("unwatch", 1, TRANSACTION),
];

/// The command named `name` (any case), if it is served.
pub fn find(name: &str) -> Option<&'static Spec> {
    index_of(name).map(|index| &COMMANDS[index])
}

/// Where the command named `name` (any case) is in [`COMMANDS`].
pub fn index_of(name: &str) -> Option<usize> {
    COMMANDS
        .iter()
        .position(|spec| spec.name.eq_ignore_ascii_case(name))
}

impl Spec {
    /// Whether argument `index` of the arguments after the name (`count` of
    /// them) is a key.
    pub fn is_key(&self, index: usize, count: usize) -> bool {
        if self.first_key == 0 {
            return false;
        }
        let position = index as i64 + 1;
        let last = if self.last_key < 0 {
            count as i64 + 1 + self.last_key
        } else {
            self.last_key
        };
        position >= self.first_key
            && position <= last
            && (position - self.first_key) % self.step == 0
    }

    /// `COMMAND INFO`'s reply for it (Redis 7's ten fields; no ACL
    /// categories, tips, key specs or subcommands).
    pub fn info(&self) -> Frame {
        let texts = |words: &[&str]| {
            Frame::Array(
                words
                    .iter()
                    .map(|word| Frame::Simple((*word).into()))
                    .collect(),
            )
        };
        Frame::Array(vec![
            Frame::bulk(self.name),
            Frame::Integer(self.arity),
            texts(self.flags),
            Frame::Integer(self.first_key),
            Frame::Integer(self.last_key),
            Frame::Integer(self.step),
            texts(&[]),
            texts(&[]),
            texts(&[]),
            texts(&[]),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_positions_follow_first_last_and_step() {
        let keys = |name: &str, count: usize| -> Vec<usize> {
            let spec = find(name).unwrap();
            (0..count).filter(|&i| spec.is_key(i, count)).collect()
        };
        assert_eq!(keys("GET", 1), [0]);
        assert_eq!(keys("set", 4), [0], "SET k v EX 10: the key only");
        assert_eq!(keys("getrange", 3), [0]);
        assert_eq!(keys("del", 3), [0, 1, 2]);
        assert_eq!(keys("mset", 4), [0, 2]);
        assert_eq!(keys("keys", 1), Vec::<usize>::new());
        assert!(find("lpush").is_none());
    }

    #[test]
    fn names_are_unique_and_lower_case() {
        let mut names: Vec<&str> = COMMANDS.iter().map(|spec| spec.name).collect();
        assert!(names.iter().all(|name| *name == name.to_lowercase()));
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), COMMANDS.len());
    }
}
