//! Users and their rights (`tern gateway --users FILE`), in a subset of
//! Redis's ACL file syntax, one user per line:
//!
//! ```text
//! user default on >s3cret ~* +@all
//! user reader on >r3ad ~* +@read +@connection
//! user app on >one >two ~* +@read +@write +@connection +@transaction
//! ```
//!
//! Rules: `on`/`off`, `>password` (several allowed), `nopass`, `~*` (or
//! `allkeys`: Tern's users reach every key, so one of them is required),
//! and the categories `+@all` (or `allcommands`), `+@read` (commands
//! flagged readonly), `+@write` (flagged write), `+@connection` (PING,
//! ECHO, SELECT, AUTH, HELLO, QUIT, CLIENT), `+@transaction` (MULTI, EXEC,
//! DISCARD, WATCH, UNWATCH). Anything else is refused with its line.
//! AUTH, HELLO and QUIT are always allowed, as in Redis. A command a user
//! may not run is refused `NOPERM this user has no permissions to run the
//! '<name>' command` (Redis 7.0's text). Unlike Redis, a users file that
//! does not name `default` leaves the default user off: a client must
//! `AUTH user password`.

use sha2::{Digest, Sha256};

use crate::commands::Spec;

/// Command categories, as bits.
pub mod category {
    pub const READ: u8 = 1;
    pub const WRITE: u8 = 2;
    pub const CONNECTION: u8 = 4;
    pub const TRANSACTION: u8 = 8;
    pub const ALL: u8 = 0xff;
}

/// The categories with their ACL names, in the order `ACL LIST` shows them.
const CATEGORIES: &[(u8, &str)] = &[
    (category::READ, "read"),
    (category::WRITE, "write"),
    (category::CONNECTION, "connection"),
    (category::TRANSACTION, "transaction"),
];

const CONNECTION_COMMANDS: &[&str] = &["ping", "echo", "select", "auth", "hello", "quit", "client"];
const TRANSACTION_COMMANDS: &[&str] = &["multi", "exec", "discard", "watch", "unwatch"];
/// Run by anyone, authenticated or not (they check who the client is).
const ALWAYS: &[&str] = &["auth", "hello", "quit"];

/// One user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub enabled: bool,
    /// SHA-256 of each password accepted; empty with `nopass`.
    passwords: Vec<[u8; 32]>,
    nopass: bool,
    /// Bits of [`category`].
    pub categories: u8,
}

impl User {
    /// The default user of a gateway without a users file: every right,
    /// the `requirepass` password if there is one.
    pub fn default_user(password: Option<&str>) -> User {
        User {
            name: "default".into(),
            enabled: true,
            passwords: password
                .map(|password| hash(password.as_bytes()))
                .into_iter()
                .collect(),
            nopass: password.is_none(),
            categories: category::ALL,
        }
    }

    /// Whether `password` opens this user.
    pub fn accepts(&self, password: &[u8]) -> bool {
        self.enabled && (self.nopass || self.passwords.contains(&hash(password)))
    }

    /// Whether a client is this user before any AUTH (on, no password).
    pub fn is_open(&self) -> bool {
        self.enabled && self.nopass
    }

    /// Whether the user may run `spec`'s command (`subcommand`: its first
    /// argument, for CONFIG and CLIENT).
    pub fn may_run(&self, spec: &Spec) -> bool {
        if self.categories == category::ALL || ALWAYS.contains(&spec.name) {
            return true;
        }
        let has = |flag: &str| spec.flags.contains(&flag);
        (self.categories & category::READ != 0 && has("readonly"))
            || (self.categories & category::WRITE != 0 && has("write"))
            || (self.categories & category::CONNECTION != 0
                && CONNECTION_COMMANDS.contains(&spec.name))
            || (self.categories & category::TRANSACTION != 0
                && TRANSACTION_COMMANDS.contains(&spec.name))
    }

    /// Whether the user may run every command (its commands can take the
    /// pipelines without a check each).
    pub fn may_run_all(&self) -> bool {
        self.categories == category::ALL
    }

    /// The user as `ACL LIST` shows it.
    pub fn rules(&self) -> String {
        let mut text = format!(
            "user {} {}",
            self.name,
            if self.enabled { "on" } else { "off" }
        );
        if self.nopass {
            text.push_str(" nopass");
        }
        for password in &self.passwords {
            text.push_str(" #");
            for byte in password {
                text.push_str(&format!("{byte:02x}"));
            }
        }
        if self.categories == category::ALL {
            text.push_str(" ~* &* +@all");
        } else {
            text.push_str(" ~* resetchannels -@all");
            for (bit, name) in CATEGORIES {
                if self.categories & bit != 0 {
                    text.push_str(&format!(" +@{name}"));
                }
            }
        }
        text
    }
}

fn hash(password: &[u8]) -> [u8; 32] {
    Sha256::digest(password).into()
}

/// A gateway's users.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Users {
    users: Vec<User>,
}

impl Users {
    /// Without a users file: the default user alone.
    pub fn only_default(password: Option<&str>) -> Users {
        Users {
            users: vec![User::default_user(password)],
        }
    }

    /// A users file's text; an error names the line and the rule.
    pub fn parse(text: &str) -> Result<Users, String> {
        let mut users: Vec<User> = Vec::new();
        for (number, line) in text.lines().enumerate() {
            let number = number + 1;
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.first() {
                None => continue,
                Some(word) if word.starts_with('#') => continue,
                Some(&"user") => {}
                Some(word) => {
                    return Err(format!(
                        "line {number}: {word:?}: a line is `user NAME RULES...`"
                    ));
                }
            }
            let Some(name) = words.get(1) else {
                return Err(format!("line {number}: a user needs a name"));
            };
            if users.iter().any(|user| user.name == *name) {
                return Err(format!("line {number}: user {name} is named twice"));
            }
            let mut user = User {
                name: (*name).to_string(),
                enabled: false,
                passwords: Vec::new(),
                nopass: false,
                categories: 0,
            };
            let mut all_keys = false;
            for rule in &words[2..] {
                match *rule {
                    "on" => user.enabled = true,
                    "off" => user.enabled = false,
                    "nopass" => user.nopass = true,
                    "~*" | "allkeys" => all_keys = true,
                    "+@all" | "allcommands" => user.categories = category::ALL,
                    rule if rule.starts_with('>') => {
                        user.passwords.push(hash(&rule.as_bytes()[1..]))
                    }
                    rule => match CATEGORIES
                        .iter()
                        .find(|(_, category)| rule.strip_prefix("+@") == Some(category))
                    {
                        Some((bit, _)) => user.categories |= bit,
                        None => {
                            return Err(format!(
                                "line {number}: rule {rule:?} is not supported (Tern's users take on, off, \
                                 >password, nopass, ~*, +@all, +@read, +@write, +@connection, +@transaction)"
                            ));
                        }
                    },
                }
            }
            if !all_keys {
                return Err(format!(
                    "line {number}: user {name} must reach every key: add ~*"
                ));
            }
            if user.categories == 0 {
                return Err(format!(
                    "line {number}: user {name} may run no command: add +@all or a category"
                ));
            }
            if !user.nopass && user.passwords.is_empty() && user.enabled {
                return Err(format!(
                    "line {number}: user {name} has no password: add >password or nopass"
                ));
            }
            users.push(user);
        }
        if users.is_empty() {
            return Err("no user in the file".into());
        }
        Ok(Users { users })
    }

    /// The user named `name`.
    pub fn find(&self, name: &[u8]) -> Option<&User> {
        self.users.iter().find(|user| user.name.as_bytes() == name)
    }

    /// The default user, if the file names one.
    pub fn default_user(&self) -> Option<&User> {
        self.find(b"default")
    }

    pub fn iter(&self) -> impl Iterator<Item = &User> {
        self.users.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::find;

    #[test]
    fn a_users_file_gives_each_user_its_rights() {
        let users = Users::parse(
            "# the operators\nuser default on >s3cret ~* +@all\n\nuser reader on >r3ad ~* +@read +@connection\nuser gone off >x ~* +@all\n",
        )
        .unwrap();
        let reader = users.find(b"reader").unwrap();
        assert!(reader.accepts(b"r3ad") && !reader.accepts(b"s3cret"));
        for (command, allowed) in [
            ("get", true),
            ("mget", true),
            ("ping", true),
            ("set", false),
            ("flushall", false),
            ("config", false),
            ("multi", false),
            ("auth", true),
        ] {
            assert_eq!(reader.may_run(find(command).unwrap()), allowed, "{command}");
        }
        assert!(!users.find(b"gone").unwrap().accepts(b"x"), "off");
        assert!(users.default_user().unwrap().may_run_all());
        assert_eq!(
            reader.rules(),
            format!(
                "user reader on #{} ~* resetchannels -@all +@read +@connection",
                "d4aba994500238169c74258e4aff21080c27b6078cd3fe1de0d25935ccb973da"
            )
        );
    }

    #[test]
    fn bad_files_are_refused_with_the_line() {
        for (text, says) in [
            ("user a on >x +@all", "line 1: user a must reach every key"),
            (
                "user a on >x ~* -@write",
                "line 1: rule \"-@write\" is not supported",
            ),
            ("user a on ~* +@all", "line 1: user a has no password"),
            ("user a on >x ~*", "line 1: user a may run no command"),
            (
                "\nuser a on >x ~* +@all\nuser a on >y ~* +@all",
                "line 3: user a is named twice",
            ),
            ("users a", "line 1: \"users\""),
            ("# nothing", "no user"),
        ] {
            let error = Users::parse(text).unwrap_err();
            assert!(error.contains(says), "{text}: {error}");
        }
    }
}
