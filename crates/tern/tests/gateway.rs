//! The Redis-protocol gateway driven by tools and a client library that
//! Tern did not write: Debian's `redis-cli` and the `redis` crate.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::TestCluster;
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use tern_check::{Input, Output, Recorder, Verdict, check};

/// A running `tern gateway`, stopped when dropped.
struct Gateway {
    child: Child,
    port: u16,
}

impl Gateway {
    fn start(cluster: &TestCluster, password: Option<&str>) -> Gateway {
        Gateway::start_with(cluster, password, &[])
    }

    fn start_with(cluster: &TestCluster, password: Option<&str>, args: &[&str]) -> Gateway {
        let mut command = common::tern();
        command.arg("--cluster").arg(cluster.map_path()).args([
            "gateway",
            "--listen",
            "127.0.0.1:0",
        ]);
        if let Some(password) = password {
            command.args(["--requirepass", password]);
        }
        command.args(args);
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .rsplit(':')
            .next()
            .unwrap()
            .parse()
            .unwrap_or_else(|_| panic!("{line}"));
        Gateway { child, port }
    }

    fn cli(&self, args: &[&str]) -> String {
        let output = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli (redis-tools) is installed");
        String::from_utf8(output.stdout)
            .unwrap()
            .trim_end()
            .to_string()
    }

    fn connection(&self) -> redis::Connection {
        connect(self.port)
    }
}

/// A `redis` crate connection to a server on the loopback `port`.
fn connect(port: u16) -> redis::Connection {
    redis::Client::open(format!("redis://127.0.0.1:{port}/"))
        .unwrap()
        .get_connection()
        .unwrap()
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn cluster() -> TestCluster {
    TestCluster::up_with_args(2, 3, &["--topology", "loopback", "--durability", "none"])
}

#[test]
fn redis_cli_runs_every_command() {
    let cluster = cluster();
    let gateway = Gateway::start(&cluster, None);
    let cli = |args: &[&str]| gateway.cli(args);
    assert_eq!(cli(&["PING"]), "PONG");
    assert_eq!(cli(&["PING", "hi"]), "hi");
    assert_eq!(cli(&["ECHO", "words"]), "words");
    assert_eq!(cli(&["SET", "a", "1"]), "OK");
    assert_eq!(cli(&["GET", "a"]), "1");
    assert_eq!(
        cli(&["SET", "a", "2", "NX"]),
        "",
        "NX on an existing key: nil"
    );
    assert_eq!(cli(&["SET", "a", "2", "XX", "GET"]), "1");
    assert_eq!(cli(&["SET", "fresh", "x", "XX"]), "");
    assert_eq!(cli(&["GETSET", "a", "3"]), "2");
    assert_eq!(cli(&["SETNX", "a", "4"]), "0");
    assert_eq!(cli(&["SETNX", "b", "4"]), "1");
    assert_eq!(cli(&["STRLEN", "a"]), "1");
    assert_eq!(cli(&["APPEND", "a", "45"]), "3");
    assert_eq!(cli(&["GET", "a"]), "345");
    assert_eq!(cli(&["INCR", "n"]), "1");
    assert_eq!(cli(&["INCRBY", "n", "10"]), "11");
    assert_eq!(cli(&["DECR", "n"]), "10");
    assert_eq!(cli(&["DECRBY", "n", "20"]), "-10");
    assert_eq!(cli(&["MSET", "k1", "v1", "k2", "v2"]), "OK");
    assert_eq!(cli(&["MGET", "k1", "nope", "k2"]), "v1\n\nv2");
    assert_eq!(cli(&["EXISTS", "k1", "k2", "nope"]), "2");
    assert_eq!(cli(&["DEL", "k1", "nope"]), "1");
    // a, b, n and k2 remain ("fresh" was never written, k1 was deleted).
    assert_eq!(cli(&["DBSIZE"]), "4");
    assert_eq!(cli(&["SELECT", "0"]), "OK");
    assert_eq!(
        cli(&["CLIENT", "ID"]).parse::<u64>().map(|id| id > 0),
        Ok(true)
    );
    assert!(cli(&["INFO"]).contains("db0:keys=4"));
    assert!(cli(&["INFO", "tern"]).contains("shards:2"));
    assert_eq!(
        cli(&["COMMAND", "COUNT"]),
        tern_gateway::commands::COMMANDS.len().to_string()
    );
    assert_eq!(cli(&["QUIT"]), "OK");
}

#[test]
fn a_client_library_gets_redis_semantics_and_pipelining() {
    let cluster = cluster();
    let gateway = Gateway::start(&cluster, None);
    let mut connection = gateway.connection();
    let query = |connection: &mut redis::Connection, args: &[&str]| -> redis::Value {
        query_on(connection, args).unwrap()
    };
    use redis::Value;
    let bulk = |text: &str| Value::BulkString(text.as_bytes().to_vec());
    assert_eq!(query(&mut connection, &["SET", "x", "1"]), Value::Okay);
    assert_eq!(query(&mut connection, &["GET", "x"]), bulk("1"));
    assert_eq!(query(&mut connection, &["GET", "missing"]), Value::Nil);
    assert_eq!(
        query(&mut connection, &["INCRBY", "x", "41"]),
        Value::Int(42)
    );
    assert_eq!(
        query(&mut connection, &["CLIENT", "SETNAME", "tester"]),
        Value::Okay
    );
    assert_eq!(
        query(&mut connection, &["CLIENT", "GETNAME"]),
        bulk("tester")
    );

    // 200 commands in one pipeline: sent at once, answered in order.
    let mut pipeline = redis::pipe();
    for index in 0..100 {
        pipeline
            .cmd("SET")
            .arg(format!("p{index}"))
            .arg(index)
            .ignore();
        pipeline.cmd("INCR").arg("counter");
    }
    let counts: Vec<i64> = pipeline.query(&mut connection).unwrap();
    assert_eq!(counts, (1..=100).collect::<Vec<i64>>());
    let values: Vec<Option<i64>> = redis::cmd("MGET")
        .arg(
            (0..100)
                .map(|index| format!("p{index}"))
                .collect::<Vec<_>>(),
        )
        .query(&mut connection)
        .unwrap();
    assert_eq!(values, (0..100).map(Some).collect::<Vec<_>>());

    // RESP3 after HELLO 3: nil is `_`, HELLO answers a map.
    let mut raw = TcpStream::connect(("127.0.0.1", gateway.port)).unwrap();
    raw.write_all(b"HELLO 3\r\nGET missing\r\n").unwrap();
    let reply = read_until(&mut raw, b"_\r\n");
    assert!(
        reply.starts_with(b"%7\r\n"),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    assert!(reply.ends_with(b"_\r\n"));
}

fn read_until(stream: &mut TcpStream, ending: &[u8]) -> Vec<u8> {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    while !received.ends_with(ending) {
        let read = stream.read(&mut chunk).unwrap();
        assert!(
            read > 0,
            "connection closed after {}",
            String::from_utf8_lossy(&received)
        );
        received.extend_from_slice(&chunk[..read]);
    }
    received
}

#[test]
fn with_requirepass_commands_wait_for_auth() {
    let cluster = cluster();
    let gateway = Gateway::start(&cluster, Some("s3cret"));
    assert!(
        gateway
            .cli(&["GET", "x"])
            .starts_with("NOAUTH Authentication required")
    );
    assert!(gateway.cli(&["AUTH", "wrong"]).starts_with("WRONGPASS"));
    assert_eq!(
        gateway.cli(&["-a", "s3cret", "--no-auth-warning", "SET", "x", "1"]),
        "OK"
    );
    assert_eq!(
        gateway.cli(&["-a", "s3cret", "--no-auth-warning", "GET", "x"]),
        "1"
    );
    let mut raw = TcpStream::connect(("127.0.0.1", gateway.port)).unwrap();
    raw.write_all(b"HELLO 3 AUTH default s3cret\r\nGET x\r\n")
        .unwrap();
    let reply = read_until(&mut raw, b"$1\r\n1\r\n");
    assert!(reply.starts_with(b"%7"));
}

#[test]
fn errors_come_back_in_redis_form_and_the_connection_survives() {
    let cluster = cluster();
    let gateway = Gateway::start(&cluster, None);
    let cli = |args: &[&str]| gateway.cli(args);
    assert_eq!(
        cli(&["LPUSH", "list", "x"]),
        "ERR unknown command 'LPUSH', with args beginning with: 'list' 'x'"
    );
    assert_eq!(
        cli(&["GET"]),
        "ERR wrong number of arguments for 'get' command"
    );
    // Past a datagram's value it travels out of band (over the replicas'
    // limit: `large_values_answer_as_redis_server_does`).
    let big = "v".repeat(tern_wire::VALUE_LEN_MAX + 1);
    assert_eq!(cli(&["SET", "k", &big]), "OK");
    assert_eq!(cli(&["STRLEN", "k"]), "1025");
    cli(&["SET", "t", "text"]);
    assert_eq!(
        cli(&["INCR", "t"]),
        "ERR value is not an integer or out of range"
    );
    assert_eq!(
        cli(&["INCRBY", "t", "x"]),
        "ERR value is not an integer or out of range"
    );
    assert_eq!(
        cli(&["SET", "k", "v", "EX", "0"]),
        "ERR invalid expire time in 'set' command"
    );
    assert_eq!(cli(&["SELECT", "16"]), "ERR DB index is out of range");
    // Several errors on one connection, then normal service.
    let mut connection = gateway.connection();
    for _ in 0..3 {
        assert!(
            redis::cmd("NOPE")
                .query::<redis::Value>(&mut connection)
                .is_err()
        );
    }
    let pong: String = redis::cmd("PING").query(&mut connection).unwrap();
    assert_eq!(pong, "PONG");
    // Bytes that are not RESP: a protocol error, then the connection closes.
    let mut raw = TcpStream::connect(("127.0.0.1", gateway.port)).unwrap();
    raw.write_all(b"*1\r\n+garbage\r\n").unwrap();
    let reply = read_until(&mut raw, b"\r\n");
    assert!(
        reply.starts_with(b"-ERR Protocol error"),
        "{}",
        String::from_utf8_lossy(&reply)
    );
}

#[test]
fn concurrent_connections_through_the_gateway_are_linearizable() {
    let cluster = cluster();
    let gateway = Gateway::start(&cluster, None);
    let seed = std::env::var("TERN_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u16>) as u64;
    eprintln!("seed {seed} (replay with TERN_TEST_SEED={seed})");
    let recorder = Recorder::new();
    let connections = 8;
    let start_line = Arc::new(Barrier::new(connections));
    let workers: Vec<_> = (0..connections)
        .map(|worker| {
            let (recorder, start_line) = (recorder.clone(), start_line.clone());
            let mut connection = gateway.connection();
            std::thread::spawn(move || {
                let mut random = SmallRng::seed_from_u64(seed * 100 + worker as u64);
                start_line.wait();
                let end = Instant::now() + Duration::from_secs(3);
                let mut sequence = 0;
                while Instant::now() < end {
                    sequence += 1;
                    let key = ["alpha", "beta", "gamma"][random.random_range(0..3)];
                    let call = Instant::now();
                    if random.random_bool(0.5) {
                        let value: Option<Vec<u8>> =
                            redis::cmd("GET").arg(key).query(&mut connection).unwrap();
                        recorder.record(
                            worker as u64,
                            key.as_bytes(),
                            Input::Get,
                            call,
                            Output::Value(value),
                            Some(Instant::now()),
                        );
                    } else {
                        let value = format!("w{worker}-{sequence}");
                        let () = redis::cmd("SET")
                            .arg(key)
                            .arg(&value)
                            .query(&mut connection)
                            .unwrap();
                        let input = Input::Put {
                            value: value.into_bytes(),
                        };
                        recorder.record(
                            worker as u64,
                            key.as_bytes(),
                            input,
                            call,
                            Output::Written,
                            Some(Instant::now()),
                        );
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().unwrap();
    }
    let history = recorder.operations();
    eprintln!("{} operations through the gateway", history.len());
    assert!(history.len() > 2_000);
    match check(&history) {
        Verdict::Linearizable => {}
        Verdict::Violation(error) => {
            panic!("seed {seed}: not linearizable through the gateway:\n{error}")
        }
    }
}

#[test]
fn a_redis_client_sees_no_error_while_slots_move_under_it() {
    let cluster = TestCluster::up(2, 1);
    let gateway = Gateway::start(&cluster, None);
    // Keys of the slots that move (shard 0 owns 0-8191 of two even shards).
    let keys: Vec<String> = (0..)
        .map(|n| format!("counter-{n}"))
        .filter(|key| tern_client::Slot::of_key(key.as_bytes()).get() < 2048)
        .take(8)
        .collect();
    let running = std::sync::atomic::AtomicBool::new(true);
    let (counted, errors) = std::thread::scope(|scope| {
        let worker = scope.spawn(|| {
            let mut connection = gateway.connection();
            let mut counted = vec![0i64; keys.len()];
            let mut errors = Vec::new();
            let mut n = 0;
            while running.load(std::sync::atomic::Ordering::Relaxed) {
                let index = n % keys.len();
                n += 1;
                match redis::cmd("INCR")
                    .arg(&keys[index])
                    .query::<i64>(&mut connection)
                {
                    Ok(_) => counted[index] += 1,
                    Err(error) => errors.push(error.to_string()),
                }
            }
            (counted, errors)
        });
        std::thread::sleep(Duration::from_millis(300));
        let output = cluster.tern(&[
            "reshard",
            "--from",
            "0",
            "--to",
            "1",
            "--slots",
            "0-2047",
            "--group-slots",
            "64",
        ]);
        std::thread::sleep(Duration::from_millis(300));
        running.store(false, std::sync::atomic::Ordering::Relaxed);
        assert!(output.status.success(), "{output:?}");
        worker.join().unwrap()
    });
    assert!(errors.is_empty(), "the client saw errors: {errors:?}");
    let mut connection = gateway.connection();
    for (key, count) in keys.iter().zip(&counted) {
        let value: i64 = redis::cmd("GET").arg(key).query(&mut connection).unwrap();
        assert_eq!(value, *count, "{key}: every INCR counted once");
    }
    assert!(counted.iter().sum::<i64>() > 100, "{counted:?}");
}

/// A redis-server of its own on a free loopback port, without persistence,
/// stopped when dropped.
struct RedisServer {
    child: Child,
    port: u16,
}

impl RedisServer {
    fn start(password: Option<&str>) -> RedisServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(
                password
                    .map(|password| ["--requirepass", password])
                    .into_iter()
                    .flatten(),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/install-deps.sh)");
        let server = RedisServer { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) {
                // PONG, or NOAUTH with a password: serving either way.
                stream.write_all(b"PING\r\n").unwrap();
                if !read_until(&mut stream, b"\r\n").is_empty() {
                    return server;
                }
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `input` on a fresh connection, says it has no more, and returns
/// everything answered until the server closes (or 5 s pass).
fn answers_to(port: u16, input: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    // A server that refuses the connection (maxclients) may have closed it
    // already: what it answered is still read below.
    let _ = stream.write_all(input);
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let mut received = Vec::new();
    let _ = stream.read_to_end(&mut received);
    received
}

#[test]
fn bad_input_gets_the_answers_redis_server_gives() {
    let cluster = cluster();
    let gateway = Gateway::start(&cluster, None);
    let redis = RedisServer::start(None);
    let long = |lead: &[u8]| {
        // Past the 64 KiB limit on a line, and small enough that each server
        // reads all of it before it answers and closes.
        let mut input = lead.to_vec();
        input.resize(64 * 1024 + 100, b'1');
        input
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "inline quoting",
            b"set \"a b\" c\r\nget 'a b'\r\nget \"a\\x20b\"\r\n".to_vec(),
        ),
        (
            "unbalanced quotes",
            b"set \"\"\"test-key\"\"\" test-value\r\n".to_vec(),
        ),
        ("an open quote", b"get \"a\r\n".to_vec()),
        (
            "a line feed alone ends an inline command",
            b"ping\nping x\r\n".to_vec(),
        ),
        (
            "blank lines and empty arrays",
            b"\r\n*0\r\n*-1\r\nping\r\n".to_vec(),
        ),
        (
            "a bulk length out of range",
            b"*1\r\n$99999999999\r\n".to_vec(),
        ),
        ("a negative bulk length", b"*1\r\n$-5\r\n".to_vec()),
        ("a multibulk length that is no number", b"*x\r\n".to_vec()),
        ("a multibulk length with a plus", b"*+1\r\n".to_vec()),
        ("not a bulk string", b"*1\r\n+x\r\n".to_vec()),
        ("no line end at all", long(b"")),
        ("zero bytes and no line end", long(b"\0")),
        ("a count without a line end", long(b"*")),
        ("a bulk length without a line end", long(b"*1\r\n$")),
    ];
    assert_same_answers(&gateway, &redis, &cases);
    // Before AUTH, with a password set: the small limits of Redis 7.
    let gateway = Gateway::start(&cluster, Some("pw"));
    let redis = RedisServer::start(Some("pw"));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("11 arguments before AUTH", b"*11\r\n".to_vec()),
        (
            "a 16 KiB + 1 string before AUTH",
            b"*1\r\n$16385\r\n".to_vec(),
        ),
        (
            "a command before AUTH",
            b"get x\r\nauth pw\r\nping\r\n".to_vec(),
        ),
    ];
    assert_same_answers(&gateway, &redis, &cases);
}

fn assert_same_answers(gateway: &Gateway, redis: &RedisServer, cases: &[(&str, Vec<u8>)]) {
    for (what, input) in cases {
        let expected = answers_to(redis.port, input);
        assert!(
            !expected.is_empty(),
            "{what}: redis-server answered nothing"
        );
        assert_eq!(
            String::from_utf8_lossy(&answers_to(gateway.port, input)),
            String::from_utf8_lossy(&expected),
            "{what}"
        );
    }
}

#[test]
fn connections_are_bounded_in_number_idle_time_and_unread_replies() {
    let cluster = cluster();
    let gateway = Gateway::start_with(&cluster, None, &["--maxclients", "2", "--timeout", "1"]);
    let ping = |stream: &mut TcpStream| {
        stream.write_all(b"PING\r\n").unwrap();
        assert_eq!(read_until(stream, b"\r\n"), b"+PONG\r\n");
    };
    let connect = || TcpStream::connect(("127.0.0.1", gateway.port)).unwrap();
    let (mut first, mut second) = (connect(), connect());
    ping(&mut first);
    ping(&mut second);
    // One more than maxclients: told so and closed.
    assert_eq!(
        answers_to(gateway.port, b"PING\r\n"),
        b"-ERR max number of clients reached\r\n"
    );
    // Idle for the timeout: closed, which frees both places.
    for stream in [&mut first, &mut second] {
        let started = Instant::now();
        let mut byte = [0u8; 1];
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        assert_eq!(stream.read(&mut byte).unwrap(), 0, "closed when idle");
        assert!(started.elapsed() < Duration::from_secs(4));
    }
    // A client that sends and never reads fills its own socket only: the
    // other client is answered all along.
    let mut greedy = connect();
    let pings = b"PING\r\n".repeat(200_000);
    let sender = std::thread::spawn(move || {
        greedy
            .set_write_timeout(Some(Duration::from_secs(3)))
            .unwrap();
        // Stops once the gateway no longer reads it either.
        let _ = greedy.write_all(&pings);
        greedy
    });
    let mut other = connect();
    for _ in 0..20 {
        let started = Instant::now();
        ping(&mut other);
        assert!(started.elapsed() < Duration::from_secs(1));
        std::thread::sleep(Duration::from_millis(100));
    }
    // Closing both frees their places (the greedy one's thread stops
    // writing when its peer is gone); INFO counts the refusals.
    drop(other);
    drop(sender.join().unwrap());
    let deadline = Instant::now() + Duration::from_secs(10);
    let stats = loop {
        let reply = answers_to(gateway.port, b"INFO stats\r\n");
        let text = String::from_utf8_lossy(&reply).into_owned();
        if text.starts_with('$') {
            break text;
        }
        assert!(Instant::now() < deadline, "no place freed: {text}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let rejected: u64 = stats
        .lines()
        .find_map(|line| line.strip_prefix("rejected_connections:"))
        .and_then(|count| count.trim().parse().ok())
        .unwrap_or_else(|| panic!("{stats}"));
    assert!(rejected >= 1, "{stats}");
}

/// (resident bytes, threads) of process `pid`, from /proc.
fn process_status(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|number| number.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {status}"))
    };
    (field("VmRSS:") * 1024, field("Threads:"))
}

/// The `connected_clients` INFO reports.
fn connected_clients(connection: &mut redis::Connection) -> u64 {
    let info: String = redis::cmd("INFO").arg("clients").query(connection).unwrap();
    info.lines()
        .find_map(|line| line.strip_prefix("connected_clients:"))
        .and_then(|count| count.trim().parse().ok())
        .unwrap_or_else(|| panic!("{info}"))
}

/// Idle connections cost the gateway no thread and about a kilobyte each
/// (the bound asserted: 4 KiB), and the clients that do send are answered
/// all along.
#[test]
fn ten_thousand_idle_connections_take_no_thread_and_little_memory() {
    const IDLE: usize = 10_000;
    const BYTES_PER_IDLE_MAX: u64 = 4 * 1024;
    // This process holds the idle ends: its open-file limit must allow them.
    let mut limit: libc::rlimit = unsafe { std::mem::zeroed() };
    assert_eq!(
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
        0
    );
    let wanted = IDLE as u64 + 256;
    assert!(
        limit.rlim_max >= wanted,
        "the open-file hard limit ({}) is below the {wanted} this test needs",
        limit.rlim_max
    );
    limit.rlim_cur = limit.rlim_cur.max(wanted);
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0);
    let cluster = cluster();
    // The idle ones and the probe: one over Redis's default maxclients.
    let gateway = Gateway::start_with(&cluster, None, &["--maxclients", "10001"]);
    let mut probe = gateway.connection();
    let _: () = redis::cmd("SET")
        .arg("k")
        .arg("v0")
        .query(&mut probe)
        .unwrap();
    let (rss_before, threads_before) = process_status(gateway.child.id());
    let mut idle = Vec::with_capacity(IDLE);
    for index in 0..IDLE {
        idle.push(TcpStream::connect(("127.0.0.1", gateway.port)).unwrap());
        // Now and then, the client that works is answered promptly.
        if index % 1000 == 999 {
            let started = Instant::now();
            let value = format!("v{index}");
            let _: () = redis::cmd("SET")
                .arg("k")
                .arg(&value)
                .query(&mut probe)
                .unwrap();
            let read: String = redis::cmd("GET").arg("k").query(&mut probe).unwrap();
            assert_eq!(read, value);
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "{:?}",
                started.elapsed()
            );
        }
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let connected = connected_clients(&mut probe);
        if connected == IDLE as u64 + 1 {
            break;
        }
        assert!(Instant::now() < deadline, "{connected} connections taken");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (rss, threads) = process_status(gateway.child.id());
    assert!(
        threads <= threads_before,
        "{threads} threads with {IDLE} idle connections, {threads_before} before"
    );
    let per_connection = rss.saturating_sub(rss_before) / IDLE as u64;
    eprintln!("{per_connection} resident bytes per idle connection, {threads} threads");
    assert!(
        per_connection <= BYTES_PER_IDLE_MAX,
        "{per_connection} bytes per idle connection ({rss_before} -> {rss} resident)"
    );
    // Any of them is served when it speaks.
    for stream in idle.iter_mut().step_by(IDLE / 50) {
        stream.write_all(b"PING\r\n").unwrap();
        assert_eq!(read_until(stream, b"\r\n"), b"+PONG\r\n");
    }
    drop(idle);
    while connected_clients(&mut probe) > 1 {
        assert!(
            Instant::now() < deadline + Duration::from_secs(10),
            "places not freed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn string_and_keyspace_commands_answer_as_redis_server_does() {
    let cluster = cluster();
    let gateway = Gateway::start(&cluster, None);
    let redis = RedisServer::start(None);
    let script = b"set s \"This is a string\"\r\n\
        getrange s 0 3\r\ngetrange s -3 -1\r\ngetrange s 0 -1\r\ngetrange s 10 100\r\n\
        getrange s 5 3\r\ngetrange s -100 -50\r\ngetrange s -1 -5\r\ngetrange s -100 2\r\n\
        getrange missing 0 -1\r\ngetrange s x 1\r\ngetrange s 1\r\nsubstr s 1 2\r\n\
        set empty \"\"\r\ngetrange empty 0 -1\r\n\
        type s\r\ntype missing\r\ntype\r\n\
        getdel s\r\ngetdel s\r\nexists s\r\ngetdel\r\n\
        set a 1\r\nset b 2\r\ntouch a b c\r\nunlink a b c\r\nexists a b\r\nunlink\r\n\
        time 1\r\n";
    assert_same_answers(&gateway, &redis, &[("the script", script.to_vec())]);
    // TIME answers seconds and microseconds near the machine's clock.
    let reply = answers_to(gateway.port, b"time\r\n");
    let text = String::from_utf8_lossy(&reply);
    let seconds: u64 = text.lines().nth(2).and_then(|s| s.parse().ok()).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(seconds.abs_diff(now) <= 2, "{text}");
}

#[test]
fn info_reports_memory_cpu_and_per_command_counters() {
    let cluster = cluster();
    let gateway = Gateway::start(&cluster, None);
    let reply = answers_to(
        gateway.port,
        b"set k v\r\nget k\r\nget k\r\nget\r\nincr k\r\nnosuch\r\ninfo\r\ninfo commandstats\r\ninfo cpu memory stats\r\n",
    );
    let text = String::from_utf8_lossy(&reply);
    // The three INFO replies are the last bulk strings.
    let sections: Vec<&str> = text.split("\r\n$").collect();
    let [default, commandstats, asked] = sections[sections.len() - 3..] else {
        panic!("{text}")
    };
    assert!(!default.contains("# Commandstats"), "{default}");
    for field in [
        "used_memory:",
        "used_cpu_user:",
        "total_commands_processed:",
        "db0:keys=",
    ] {
        assert!(default.contains(field), "{field} in {default}");
    }
    assert!(
        commandstats.contains("cmdstat_get:calls=2,") && commandstats.contains("rejected_calls=1,"),
        "{commandstats}"
    );
    let incr = commandstats
        .lines()
        .find(|line| line.starts_with("cmdstat_incr:"))
        .unwrap_or_else(|| panic!("{commandstats}"));
    assert!(
        incr.starts_with("cmdstat_incr:calls=1,") && incr.ends_with("failed_calls=1"),
        "an INCR of a non-number ran and failed: {incr}"
    );
    assert!(!commandstats.contains("nosuch"), "{commandstats}");
    for field in ["# CPU", "# Memory", "# Stats", "total_error_replies:3"] {
        assert!(asked.contains(field), "{field} in {asked}");
    }
    assert!(!asked.contains("# Keyspace"), "{asked}");
}

/// Sends `args` as one command; an error reply as its text.
fn query_on(connection: &mut redis::Connection, args: &[&str]) -> Result<redis::Value, String> {
    let mut command = redis::cmd(args[0]);
    for arg in &args[1..] {
        command.arg(*arg);
    }
    command
        .query::<redis::Value>(connection)
        .map_err(|error| error.detail().unwrap_or_default().to_string())
}

/// The keys of an array reply, sorted.
fn texts(value: redis::Value) -> Vec<String> {
    let redis::Value::Array(items) = value else {
        panic!("not an array: {value:?}")
    };
    let mut keys: Vec<String> = items
        .into_iter()
        .map(|item| match item {
            redis::Value::BulkString(bytes) => String::from_utf8(bytes).unwrap(),
            other => panic!("{other:?}"),
        })
        .collect();
    keys.sort();
    keys
}

/// Every key SCAN names from cursor 0 until it answers 0 again.
fn scan_all(connection: &mut redis::Connection, args: &[&str]) -> Vec<String> {
    let (mut cursor, mut seen) = ("0".to_string(), std::collections::BTreeSet::new());
    loop {
        let mut command = vec!["SCAN", &cursor];
        command.extend_from_slice(args);
        let redis::Value::Array(page) = query_on(connection, &command).unwrap() else {
            panic!("SCAN answers an array")
        };
        let [redis::Value::BulkString(next), keys] = &page[..] else {
            panic!("{page:?}")
        };
        seen.extend(texts(keys.clone()));
        cursor = String::from_utf8(next.clone()).unwrap();
        if cursor == "0" {
            return seen.into_iter().collect();
        }
    }
}

/// A session with one server, writing down what it answers.
struct Session {
    connection: redis::Connection,
    answers: Vec<String>,
}

impl Session {
    fn say(&mut self, what: &str, answer: impl std::fmt::Debug) {
        self.answers.push(format!("{what}: {answer:?}"));
    }

    /// Records what `args` answered.
    fn ask(&mut self, what: &str, args: &[&str]) {
        let answer = query_on(&mut self.connection, args);
        self.say(what, answer);
    }

    /// Records the keys `KEYS pattern` answered, sorted.
    fn keys(&mut self, what: &str, pattern: &str) {
        let keys = texts(query_on(&mut self.connection, &["KEYS", pattern]).unwrap());
        self.say(what, keys);
    }

    /// Records the keys a whole SCAN named.
    fn scan(&mut self, what: &str, args: &[&str]) {
        let keys = scan_all(&mut self.connection, args);
        self.say(what, keys);
    }

    fn run(&mut self, args: &[&str]) {
        query_on(&mut self.connection, args).unwrap();
    }
}

/// What one server answers to a session of commands, as text: arrays of
/// keys sorted (the order of KEYS and SCAN is the server's own), SCAN's
/// pages gathered into the set of keys they named, errors by their text.
fn session_answers(port: u16) -> Vec<String> {
    let mut session = Session {
        connection: connect(port),
        answers: Vec::new(),
    };
    let keys = ["a", "b", "user:1", "user:2", "user:10", "other"];
    session.ask("flushall", &["FLUSHALL"]);
    for key in keys {
        session.run(&["SET", key, key]);
    }
    session.ask("select 9", &["SELECT", "9"]);
    session.run(&["SET", "a", "nine"]);
    session.run(&["SET", "only-in-9", "x"]);
    session.ask("dbsize 9", &["DBSIZE"]);
    session.keys("keys 9", "*");
    session.ask("get a in 9", &["GET", "a"]);
    session.scan("scan 9", &["COUNT", "1"]);
    session.ask("select 0", &["SELECT", "0"]);
    session.ask("get a in 0", &["GET", "a"]);
    session.ask("exists only-in-9", &["EXISTS", "only-in-9"]);
    session.ask("dbsize 0", &["DBSIZE"]);
    for pattern in ["*", "user:*", "user:?", "*[ab]", "[^u]*", "nothing*"] {
        session.keys(pattern, pattern);
    }
    session.scan("scan", &["COUNT", "2"]);
    session.scan("scan match", &["MATCH", "user:*"]);
    session.scan("scan type", &["TYPE", "string", "COUNT", "100"]);
    session.scan("scan other type", &["TYPE", "hash"]);
    let random = query_on(&mut session.connection, &["RANDOMKEY"]).unwrap();
    let redis::Value::BulkString(random) = random else {
        panic!("{random:?}")
    };
    let random = String::from_utf8(random).unwrap();
    session.say("randomkey is a key", keys.contains(&random.as_str()));
    session.ask("select 16", &["SELECT", "16"]);
    session.ask("select x", &["SELECT", "x"]);
    session.ask("scan bad cursor", &["SCAN", "x"]);
    session.ask("select 9 again", &["SELECT", "9"]);
    session.ask("flushdb 9", &["FLUSHDB", "SYNC"]);
    session.ask("dbsize 9 flushed", &["DBSIZE"]);
    session.ask("randomkey of none", &["RANDOMKEY"]);
    session.run(&["SELECT", "0"]);
    session.ask("dbsize 0 kept", &["DBSIZE"]);
    session.ask("flushall async", &["FLUSHALL", "ASYNC"]);
    session.ask("dbsize after flushall", &["DBSIZE"]);
    session.keys("keys after flushall", "*");
    session.answers
}

#[test]
fn databases_keys_and_scans_answer_as_redis_server_does() {
    let cluster = cluster();
    let gateway = Gateway::start(&cluster, None);
    let redis = RedisServer::start(None);
    let expected = session_answers(redis.port);
    let answered = session_answers(gateway.port);
    for (tern, redis) in answered.iter().zip(&expected) {
        assert_eq!(tern, redis);
    }
    assert_eq!(answered.len(), expected.len());
}

#[test]
fn command_info_describes_each_command_as_redis_server_does() {
    let cluster = cluster();
    let gateway = Gateway::start(&cluster, None);
    let redis = RedisServer::start(None);
    let (mut ours, mut theirs) = (gateway.connection(), connect(redis.port));
    let redis::Value::Array(all) = query_on(&mut ours, &["COMMAND"]).unwrap() else {
        panic!("COMMAND answers an array")
    };
    assert_eq!(
        query_on(&mut ours, &["COMMAND", "COUNT"]),
        Ok(redis::Value::Int(all.len() as i64))
    );
    // Name, arity, flags, first key, last key, step: what clients route by.
    let head = |info: &redis::Value| -> Vec<redis::Value> {
        let redis::Value::Array(fields) = info else {
            panic!("{info:?}")
        };
        fields[..6].to_vec()
    };
    for info in &all {
        let redis::Value::Array(fields) = info else {
            panic!("{info:?}")
        };
        let redis::Value::BulkString(name) = &fields[0] else {
            panic!("{fields:?}")
        };
        let name = String::from_utf8(name.clone()).unwrap();
        let redis::Value::Array(expected) =
            query_on(&mut theirs, &["COMMAND", "INFO", &name]).unwrap()
        else {
            panic!("an array")
        };
        assert_eq!(head(info), head(&expected[0]), "{name}");
    }
    assert_eq!(
        query_on(&mut ours, &["COMMAND", "INFO", "nosuch"]),
        Ok(redis::Value::Array(vec![redis::Value::Nil]))
    );
}

#[test]
fn client_and_config_serve_the_tools() {
    let cluster = cluster();
    let gateway = Gateway::start(&cluster, None);
    let mut alpha = gateway.connection();
    let mut other = gateway.connection();
    let text = |value: Result<redis::Value, String>| match value {
        Ok(redis::Value::BulkString(bytes)) => String::from_utf8(bytes).unwrap(),
        Ok(redis::Value::SimpleString(text)) => text,
        Ok(redis::Value::Okay) => "OK".into(),
        Ok(redis::Value::Int(n)) => n.to_string(),
        Ok(other) => format!("{other:?}"),
        Err(error) => format!("ERR {error}"),
    };
    assert_eq!(
        text(query_on(&mut alpha, &["CLIENT", "SETNAME", "alpha"])),
        "OK"
    );
    query_on(&mut alpha, &["SELECT", "3"]).unwrap();
    query_on(&mut alpha, &["GET", "x"]).unwrap();
    let info = text(query_on(&mut alpha, &["CLIENT", "INFO"]));
    for field in ["name=alpha ", "db=3 ", "cmd=get "] {
        assert!(info.contains(field), "{field} in {info}");
    }
    let id = text(query_on(&mut alpha, &["CLIENT", "ID"]));
    let list = text(query_on(&mut other, &["CLIENT", "LIST"]));
    assert_eq!(list.lines().count(), 2, "{list}");
    assert!(
        list.contains(&format!("id={id} ")) && list.contains("name=alpha"),
        "{list}"
    );
    assert_eq!(
        text(query_on(&mut other, &["CLIENT", "KILL", "ID", &id])),
        "1"
    );
    assert!(
        text(query_on(&mut other, &["CLIENT", "KILL", "10.9.9.9:1"])).contains("No such client")
    );
    // The killed connection is closed within its read timeout.
    let deadline = Instant::now() + Duration::from_secs(3);
    while query_on(&mut alpha, &["PING"]).is_ok() {
        assert!(Instant::now() < deadline, "still served after CLIENT KILL");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Settings: read, changed at run time, refused with Redis's texts.
    let get = |connection: &mut redis::Connection, pattern: &str| {
        format!(
            "{:?}",
            query_on(connection, &["CONFIG", "GET", pattern]).unwrap()
        )
    };
    assert!(get(&mut other, "maxclients").contains("10000"));
    assert!(get(&mut other, "*").contains("appendonly"));
    assert_eq!(
        text(query_on(&mut other, &["CONFIG", "SET", "timeout", "1"])),
        "OK"
    );
    let mut idle = TcpStream::connect(("127.0.0.1", gateway.port)).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let started = Instant::now();
    assert_eq!(
        idle.read(&mut [0u8; 1]).unwrap(),
        0,
        "an idle connection is closed"
    );
    assert!(started.elapsed() < Duration::from_secs(4));
    // `other` was idle as long: a new connection sets it back.
    let mut other = gateway.connection();
    assert_eq!(
        text(query_on(&mut other, &["CONFIG", "SET", "timeout", "0"])),
        "OK"
    );
    assert!(text(query_on(&mut other, &["CONFIG", "SET", "databases", "4"])).contains("immutable"));
    assert!(
        text(query_on(&mut other, &["CONFIG", "SET", "nosuch", "1"])).contains("Unknown option")
    );
    assert_eq!(text(query_on(&mut other, &["CONFIG", "RESETSTAT"])), "OK");
    let stats = text(query_on(&mut other, &["INFO", "stats"]));
    assert!(stats.contains("total_connections_received:0"), "{stats}");
}

#[test]
fn expiry_commands_answer_as_redis_server_does() {
    let cluster = cluster();
    let gateway = Gateway::start(&cluster, None);
    let redis = RedisServer::start(None);
    // Deadlines far enough ahead that TTL's rounding hides the time the
    // commands take; fixed instants for the absolute forms (2100-01-01).
    let script = b"set k v ex 100\r\nttl k\r\nset k v px 100000\r\nttl k\r\n\
        set k v exat 4102444800\r\nexpiretime k\r\npexpiretime k\r\n\
        set k v keepttl\r\nexpiretime k\r\nset k v\r\nttl k\r\n\
        ttl missing\r\npttl missing\r\nexpiretime missing\r\n\
        set k v ex 0\r\nset k v ex -5\r\nset k v ex abc\r\nset k v ex\r\n\
        set k v ex 10 px 10\r\nset k v keepttl ex 10\r\nset k v ex 10 ex 20\r\nttl k\r\n\
        set k v ex 9999999999999999\r\nset k v pxat 4102444800000 get\r\npexpiretime k\r\n\
        set k v nx ex 10\r\nset fresh v nx ex 30\r\nttl fresh\r\n\
        setex k 100 v\r\nttl k\r\nsetex k 0 v\r\nsetex k x v\r\nsetex k 100\r\n\
        psetex k 100000 v\r\nttl k\r\npsetex k -1 v\r\n\
        expire k 200\r\nttl k\r\nexpire k 300 nx\r\nexpire k 300 xx\r\nttl k\r\n\
        expire k 100 gt\r\nexpire k 400 gt\r\nexpire k 500 lt\r\nexpire k 50 lt\r\nttl k\r\n\
        expire k 60 xx gt\r\nexpire k 10 xx lt\r\nttl k\r\n\
        expire k 10 nx xx\r\nexpire k 10 gt lt\r\nexpire k 10 foo\r\nexpire k x\r\n\
        expire k\r\nexpire missing 10\r\n\
        persist k\r\npersist k\r\nttl k\r\npersist missing\r\n\
        expire k 100 gt\r\nexpire k 100 lt\r\nttl k\r\n\
        pexpire k 200000\r\nttl k\r\nexpireat k 4102444800\r\nexpiretime k\r\n\
        pexpireat k 4102444800123\r\npexpiretime k\r\nexpiretime k\r\n\
        getex k\r\ngetex k ex 300\r\nttl k\r\ngetex k persist\r\nttl k\r\n\
        getex k px 20000 px 30000\r\nttl k\r\ngetex k ex 0\r\ngetex k ex 10 persist\r\n\
        getex missing ex 10\r\ngetex k foo\r\ngetex\r\n\
        set n 10 ex 100\r\nincr n\r\nttl n\r\nappend n 1\r\nttl n\r\nget n\r\n\
        expire k -1\r\nexists k\r\nset k v\r\nexpire k 0\r\nexists k\r\n\
        set k v\r\nexpireat k 1\r\nget k\r\nset k v ex 100\r\nexpire k -1 gt\r\nttl k\r\n";
    assert_same_answers(&gateway, &redis, &[("the expiry script", script.to_vec())]);
    // Then time passes: a value is gone from its deadline on, for GET,
    // EXISTS, TTL and the keyspace commands alike.
    let mut ours = gateway.connection();
    let mut ask = |args: &[&str]| query_on(&mut ours, args).unwrap();
    assert_eq!(ask(&["FLUSHALL"]), redis::Value::Okay);
    assert_eq!(
        ask(&["SET", "short", "v", "PX", "1500"]),
        redis::Value::Okay
    );
    assert_eq!(ask(&["SET", "long", "v", "EX", "100"]), redis::Value::Okay);
    let redis::Value::Int(left) = ask(&["PTTL", "short"]) else {
        panic!("PTTL answers an integer")
    };
    assert!((1..=1500).contains(&left), "{left}");
    std::thread::sleep(Duration::from_millis(1600));
    assert_eq!(ask(&["GET", "short"]), redis::Value::Nil);
    assert_eq!(ask(&["EXISTS", "short", "long"]), redis::Value::Int(1));
    assert_eq!(ask(&["TTL", "short"]), redis::Value::Int(-2));
    assert_eq!(texts(ask(&["KEYS", "*"])), ["long"]);
    assert_eq!(ask(&["DBSIZE"]), redis::Value::Int(1));
    // INFO keyspace counts the keys with a deadline and their mean TTL.
    assert_eq!(ask(&["SET", "lasting", "v"]), redis::Value::Okay);
    let redis::Value::BulkString(info) = ask(&["INFO", "keyspace"]) else {
        panic!("INFO answers a bulk string")
    };
    let info = String::from_utf8(info).unwrap();
    let line = info
        .lines()
        .find_map(|line| line.strip_prefix("db0:keys=2,expires=1,avg_ttl="))
        .unwrap_or_else(|| panic!("{info}"));
    let avg_ttl: u64 = line.trim().parse().unwrap();
    assert!((90_000..=100_000).contains(&avg_ttl), "{info}");
}

#[test]
fn setrange_incrbyfloat_bits_and_lcs_answer_as_redis_server_does() {
    let cluster = cluster();
    let gateway = Gateway::start(&cluster, None);
    let redis = RedisServer::start(None);
    let script = b"set s \"Hello World\"\r\nsetrange s 6 Redis\r\nget s\r\n\
        setrange fresh 5 x\r\nget fresh\r\nsetrange s 0 \"\"\r\nsetrange missing 3 \"\"\r\n\
        exists missing\r\nsetrange s -1 x\r\nsetrange s x y\r\nsetrange s 1\r\nstrlen s\r\n\
        set f 10.50\r\nincrbyfloat f 0.1\r\nincrbyfloat f -5\r\nincrbyfloat f 2.0e1\r\n\
        incrbyfloat nf 3\r\nincrbyfloat nf 0.2\r\nincrbyfloat f abc\r\nset t text\r\n\
        incrbyfloat t 1\r\nset z 3\r\nincrbyfloat z -3\r\nincrbyfloat f\r\n\
        set e 5 ex 100\r\nincrbyfloat e 1\r\nttl e\r\nsetrange e 0 9\r\nttl e\r\n\
        setbit b 7 1\r\nsetbit b 7 0\r\nsetbit b 7 1\r\nget b\r\nsetbit b 100 1\r\nstrlen b\r\n\
        getbit b 7\r\ngetbit b 6\r\ngetbit b 100\r\ngetbit b 99999\r\ngetbit missing 3\r\n\
        setbit b -1 1\r\nsetbit b 1 2\r\nsetbit b x 1\r\ngetbit b x\r\ngetbit b 4294967296\r\n\
        set foobar foobar\r\nbitcount foobar\r\nbitcount foobar 0 0\r\nbitcount foobar 1 1\r\n\
        bitcount foobar 1 1 byte\r\nbitcount foobar 5 30 bit\r\nbitcount foobar -2 -1\r\n\
        bitcount foobar 3 1\r\nbitcount foobar 0\r\nbitcount foobar 0 1 nope\r\n\
        bitcount foobar x 1\r\nbitcount missing\r\nbitcount missing 0 1\r\n\
        set p \"\\xff\\xf0\\x00\"\r\nbitpos p 0\r\nbitpos p 1\r\nbitpos p 1 2\r\n\
        bitpos p 0 1 -1\r\nbitpos p 1 7 15 bit\r\nbitpos p 0 0 0\r\nbitpos p 2\r\n\
        set ones \"\\xff\\xff\"\r\nbitpos ones 0\r\nbitpos ones 0 0 -1\r\nbitpos ones 1 5 1\r\n\
        bitpos missing 0\r\nbitpos missing 1\r\nbitpos p 1 0 1 byte\r\nbitpos p 1 0 1 nope\r\n\
        bitpos p x\r\n\
        set k1 ohmytext\r\nset k2 mynewtext\r\nlcs k1 k2\r\nlcs k1 k2 len\r\n\
        lcs k1 k2 idx\r\nlcs k1 k2 idx minmatchlen 4\r\nlcs k1 k2 idx withmatchlen\r\n\
        lcs k1 k2 idx minmatchlen 4 withmatchlen\r\nlcs k1 k2 len idx\r\nlcs k1 missing\r\n\
        lcs k1 missing idx\r\nlcs k1 k2 nope\r\nlcs k1 k2 minmatchlen x\r\nlcs k1\r\n";
    assert_same_answers(&gateway, &redis, &[("the script", script.to_vec())]);
    // Not like redis-server, which adds in long double: sums are 64-bit
    // floats printed to 15 significant digits, and one past f64's range is
    // refused.
    let mut ours = gateway.connection();
    let mut ask = |args: &[&str]| query_on(&mut ours, args);
    ask(&["SET", "f", "5.6"]).unwrap();
    let sum = ask(&["INCRBYFLOAT", "f", "5000"]).unwrap();
    assert_eq!(sum, redis::Value::BulkString(b"5005.6".to_vec()));
    ask(&["SET", "big", "1.7e308"]).unwrap();
    assert_eq!(
        ask(&["INCRBYFLOAT", "big", "1.7e308"]),
        Err("increment would produce NaN or Infinity".into())
    );
}

#[test]
fn pipelined_commands_keep_each_keys_order_as_redis_server_does() {
    let cluster = cluster();
    let gateway = Gateway::start(&cluster, None);
    let redis = RedisServer::start(None);
    // One write of many commands: the gateway runs them together, yet the
    // same key's commands must land in order and every reply in its place.
    let mut script = Vec::new();
    for round in 0..40 {
        script.extend_from_slice(b"incr counter\r\n");
        script.extend_from_slice(format!("set k{round} v{round}\r\n").as_bytes());
        script.extend_from_slice(format!("append k{round} x\r\nget k{round}\r\n").as_bytes());
        script.extend_from_slice(format!("mset a {round} b {round} a late{round}\r\n").as_bytes());
        script.extend_from_slice(b"mget a b nothing\r\n");
        if round % 10 == 0 {
            // Commands that end a round: another database, then back.
            script.extend_from_slice(b"select 3\r\nget counter\r\nincr counter\r\nselect 0\r\n");
        }
        script.extend_from_slice(
            format!("del k{round} k{round} missing\r\nexists a k{round}\r\n").as_bytes(),
        );
    }
    script.extend_from_slice(b"get counter\r\nincrby counter x\r\nset\r\nstrlen a\r\n");
    assert_same_answers(&gateway, &redis, &[("one pipelined write", script)]);
}

#[test]
fn a_command_naming_more_keys_than_a_token_half_holds_is_answered_whole() {
    let cluster = cluster();
    let gateway = Gateway::start(&cluster, None);
    let mut connection = gateway.connection();
    query_on(&mut connection, &["SET", "k7", "seven"]).unwrap();
    query_on(&mut connection, &["SET", "k70000", "last"]).unwrap();
    // 70 001 keys: more calls than 16 bits count, in one command.
    let keys: Vec<String> = (0..=70_000).map(|n| format!("k{n}")).collect();
    let mut args = vec!["MGET"];
    args.extend(keys.iter().map(String::as_str));
    let redis::Value::Array(values) = query_on(&mut connection, &args).unwrap() else {
        panic!("MGET answers an array")
    };
    assert_eq!(values.len(), 70_001);
    assert_eq!(values[7], redis::Value::BulkString(b"seven".to_vec()));
    assert_eq!(values[70_000], redis::Value::BulkString(b"last".to_vec()));
    assert_eq!(
        values
            .iter()
            .filter(|value| **value != redis::Value::Nil)
            .count(),
        2
    );
    // The connection still serves.
    assert_eq!(
        query_on(&mut connection, &["GET", "k7"]).unwrap(),
        redis::Value::BulkString(b"seven".to_vec())
    );
}

#[test]
fn large_values_answer_as_redis_server_does() {
    let cluster = cluster();
    let gateway = Gateway::start(&cluster, None);
    let redis = RedisServer::start(None);
    let bytes = |length: usize, seed: u8| -> Vec<u8> {
        (0..length)
            .map(|i| (i as u8).wrapping_mul(37).wrapping_add(seed))
            .collect()
    };
    let mut tern = gateway.connection();
    let mut peer = connect(redis.port);
    for (index, size) in [1024usize, 1025, 64 << 10, 1 << 20, 16 << 20]
        .into_iter()
        .enumerate()
    {
        let value = bytes(size, index as u8);
        let other = bytes(size / 2 + 3, 100 + index as u8);
        let key = format!("big{size}");
        let commands: Vec<Vec<Vec<u8>>> = vec![
            vec![b"SET".to_vec(), key.clone().into(), value.clone()],
            vec![b"GET".to_vec(), key.clone().into()],
            vec![b"STRLEN".to_vec(), key.clone().into()],
            vec![
                b"GETRANGE".to_vec(),
                key.clone().into(),
                b"1000".to_vec(),
                b"1100".to_vec(),
            ],
            vec![b"APPEND".to_vec(), key.clone().into(), b"tail".to_vec()],
            vec![
                b"SETRANGE".to_vec(),
                key.clone().into(),
                b"5".to_vec(),
                other.clone(),
            ],
            vec![b"GETSET".to_vec(), key.clone().into(), other.clone()],
            vec![b"INCR".to_vec(), key.clone().into()],
            vec![
                b"MSET".to_vec(),
                b"m1".to_vec(),
                value.clone(),
                b"m2".to_vec(),
                other.clone(),
            ],
            vec![
                b"MGET".to_vec(),
                b"m1".to_vec(),
                b"m2".to_vec(),
                b"none".to_vec(),
            ],
            vec![
                b"SET".to_vec(),
                b"m1".to_vec(),
                other.clone(),
                b"GET".to_vec(),
            ],
            vec![b"GETDEL".to_vec(), key.clone().into()],
            vec![b"EXISTS".to_vec(), key.clone().into(), b"m1".to_vec()],
        ];
        for command in &commands {
            let grows_past_limit =
                command[0] == b"APPEND" && size + 4 > tern_wire::LARGE_VALUE_LEN_DEFAULT;
            let run = |connection: &mut redis::Connection| {
                let mut cmd = redis::cmd(std::str::from_utf8(&command[0]).unwrap());
                for arg in &command[1..] {
                    cmd.arg(&arg[..]);
                }
                cmd.query::<redis::Value>(connection)
                    .map_err(|error| error.to_string())
            };
            if grows_past_limit {
                // Past the replicas' limit (Redis's is 512 MB): refused,
                // the value unchanged.
                let refused = run(&mut tern).unwrap_err();
                assert!(
                    refused.contains("exceeds maximum allowed size"),
                    "{refused}"
                );
                continue;
            }
            let (ours, theirs) = (run(&mut tern), run(&mut peer));
            assert!(
                ours == theirs,
                "{} of a {size}-byte value: the gateway and redis-server differ",
                String::from_utf8_lossy(&command[0])
            );
        }
    }
    // Pipelined: a command with a large value runs in its place among the
    // others (it ends its round), so the same key's commands keep order.
    let large = "L".repeat(3000);
    let mut script = Vec::new();
    for round in 0..5 {
        script.extend_from_slice(format!("set p{round} small\r\nget p{round}\r\n").as_bytes());
        script.extend_from_slice(
            format!(
                "*3\r\n$3\r\nset\r\n$2\r\np{round}\r\n${}\r\n{large}\r\n",
                large.len()
            )
            .as_bytes(),
        );
        script.extend_from_slice(
            format!("strlen p{round}\r\nappend p{round} x\r\nmget p{round} none\r\nset p{round} s\r\nget p{round}\r\n")
                .as_bytes(),
        );
    }
    assert_same_answers(&gateway, &redis, &[("large values pipelined", script)]);
    // Over the replicas' limit: an error naming it, the connection kept.
    let over = vec![b'o'; tern_wire::LARGE_VALUE_LEN_DEFAULT + 1];
    let refused = redis::cmd("SET")
        .arg("over")
        .arg(&over[..])
        .query::<redis::Value>(&mut tern)
        .unwrap_err()
        .to_string();
    assert!(refused.contains("16777216"), "{refused}");
    assert_eq!(
        query_on(&mut tern, &["PING"]).unwrap(),
        redis::Value::SimpleString("PONG".into())
    );
}

/// Names like `base`, `base1`, ... of keys of the shard `base` is in, one
/// per `{x}` of `script`, substituted in order of first appearance.
fn keys_of_one_shard(cluster: &TestCluster, script: &str) -> String {
    let shard_of = |key: &str| {
        cluster
            .map
            .shard_of_key_hash(tern_wire::key_hash(key.as_bytes()))
            .id
    };
    let wanted = shard_of("t");
    let mut names = (0..)
        .map(|n| format!("t{n}"))
        .filter(|key| shard_of(key) == wanted);
    let mut out = script.to_string();
    for placeholder in ["{a}", "{b}", "{c}", "{n}", "{s}", "{t}", "{u}", "{missing}"] {
        out = out.replace(placeholder, &names.next().unwrap());
    }
    out
}

#[test]
fn multi_exec_discard_and_watch_answer_as_redis_server_does() {
    let cluster = cluster();
    let gateway = Gateway::start(&cluster, None);
    let redis = RedisServer::start(None);
    let script = keys_of_one_shard(
        &cluster,
        "multi\r\nset {a} 1\r\nincr {n}\r\nincr {a}\r\nget {a}\r\nappend {s} xy\r\n\
         setnx {a} z\r\nset {b} v nx\r\nset {b} w xx\r\nset {c} v xx\r\n\
         exists {a} {b} {c}\r\ndel {b} {c}\r\nmget {a} {b}\r\nstrlen {s}\r\n\
         decrby {n} 5\r\nmset {b} 1 {c} 2\r\nexec\r\n\
         set {t} text\r\nmulti\r\nincr {t}\r\nset {u} 1\r\nexec\r\nget {u}\r\n\
         multi\r\nnosuchcommand\r\nset {u} 2\r\nexec\r\nget {u}\r\n\
         multi\r\nget\r\nexec\r\n\
         exec\r\ndiscard\r\nmulti\r\nmulti\r\ndiscard\r\n\
         multi\r\nset {u} 3\r\ndiscard\r\nget {u}\r\nmulti\r\nexec\r\n\
         watch {a} {b}\r\nset {a} changed\r\nmulti\r\nset {u} 4\r\nexec\r\nget {u}\r\n\
         watch {a}\r\nmulti\r\nset {u} 5\r\nexec\r\nget {u}\r\n\
         watch {a}\r\nunwatch\r\nset {a} again\r\nmulti\r\nget {a}\r\nexec\r\n\
         watch {missing}\r\nmulti\r\nget {a}\r\nexec\r\n\
         del {c}\r\nmsetnx {c} 1 {missing} 2\r\nmget {c} {missing}\r\n\
         msetnx {c} 3 {u} 4\r\nget {c}\r\nmsetnx {c}\r\n",
    );
    assert_same_answers(&gateway, &redis, &[("transactions", script.into_bytes())]);
}

#[test]
fn a_watched_key_another_client_changes_fails_exec_and_msets_in_exec_are_atomic() {
    let cluster = cluster();
    let gateway = Gateway::start(&cluster, None);
    let names = keys_of_one_shard(&cluster, "{a} {b}");
    let [a, b]: [&str; 2] = names.split(' ').collect::<Vec<_>>().try_into().unwrap();
    let (mut first, mut second) = (gateway.connection(), gateway.connection());
    let set = |connection: &mut redis::Connection, key: &str, value: &str| {
        query_on(connection, &["SET", key, value]).unwrap();
    };
    set(&mut first, a, "0");
    query_on(&mut first, &["WATCH", a]).unwrap();
    set(&mut second, a, "other");
    query_on(&mut first, &["MULTI"]).unwrap();
    query_on(&mut first, &["SET", a, "mine"]).unwrap();
    assert_eq!(query_on(&mut first, &["EXEC"]), Ok(redis::Value::Nil));
    assert_eq!(
        query_on(&mut first, &["GET", a]),
        Ok(redis::Value::BulkString(b"other".to_vec()))
    );
    set(&mut first, b, "other");
    // A queue is bounded by what one transaction carries, refused by name.
    query_on(&mut first, &["MULTI"]).unwrap();
    let big = "v".repeat(2000);
    let refused = query_on(&mut first, &["SET", a, &big]).unwrap_err();
    assert!(refused.contains("at most 1024 bytes"), "{refused}");
    let aborted = query_on(&mut first, &["EXEC"]).unwrap_err();
    assert!(
        aborted.contains("discarded because of previous errors"),
        "{aborted}"
    );
    // Writers of both keys at once, readers of both in one EXEC: a reader
    // never sees the keys apart.
    never_apart(&gateway, a, b, true);
}

/// Two writers setting keys `a` and `b` to one value at once, a reader of
/// both meanwhile (for 2 s): the reader never sees them apart. Each write
/// and read is a MULTI/EXEC when `in_multi`, a plain MSET/MGET otherwise.
fn never_apart(gateway: &Gateway, a: &str, b: &str, in_multi: bool) {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..2)
        .map(|writer| {
            let (port, stop) = (gateway.port, stop.clone());
            let (a, b) = (a.to_string(), b.to_string());
            std::thread::spawn(move || {
                let mut connection = connect(port);
                let mut round = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let value = format!("{writer}-{round}");
                    let mset = ["MSET", &a, &value, &b, &value];
                    if in_multi {
                        query_on(&mut connection, &["MULTI"]).unwrap();
                        query_on(&mut connection, &mset).unwrap();
                        query_on(&mut connection, &["EXEC"]).unwrap();
                    } else {
                        query_on(&mut connection, &mset).unwrap();
                    }
                    round += 1;
                }
                round
            })
        })
        .collect();
    let mut reader = gateway.connection();
    let mut reads = 0;
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        let answer = if in_multi {
            query_on(&mut reader, &["MULTI"]).unwrap();
            query_on(&mut reader, &["MGET", a, b]).unwrap();
            let exec = query_on(&mut reader, &["EXEC"]).unwrap();
            let redis::Value::Array(mut replies) = exec else {
                panic!("EXEC answers an array: {exec:?}")
            };
            replies.remove(0)
        } else {
            query_on(&mut reader, &["MGET", a, b]).unwrap()
        };
        let redis::Value::Array(replies) = answer else {
            panic!("MGET answers an array")
        };
        assert_eq!(replies.len(), 2, "{replies:?}");
        assert_eq!(replies[0], replies[1], "a reader saw the keys apart");
        reads += 1;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let written: u64 = writers.into_iter().map(|w| w.join().unwrap()).sum();
    assert!(
        reads > 10 && written > 10,
        "{reads} reads, {written} writes"
    );
}

#[test]
fn msets_mgets_and_transactions_across_shards_are_atomic() {
    let cluster = cluster();
    let gateway = Gateway::start(&cluster, None);
    let shard_of = |key: &str| {
        cluster
            .map
            .shard_of_key_hash(tern_wire::key_hash(key.as_bytes()))
            .id
    };
    let a = "x0".to_string();
    let b = (1..)
        .map(|n| format!("x{n}"))
        .find(|key| shard_of(key) != shard_of(&a))
        .unwrap();
    let mut connection = gateway.connection();
    let value = |text: &str| redis::Value::BulkString(text.as_bytes().to_vec());
    // MULTI/EXEC and MSETNX across shards commit by two-phase commit.
    query_on(&mut connection, &["MULTI"]).unwrap();
    query_on(&mut connection, &["SET", &a, "1"]).unwrap();
    query_on(&mut connection, &["INCR", &b]).unwrap();
    query_on(&mut connection, &["GET", &a]).unwrap();
    let exec = query_on(&mut connection, &["EXEC"]).unwrap();
    assert_eq!(
        exec,
        redis::Value::Array(vec![redis::Value::Okay, redis::Value::Int(1), value("1")])
    );
    query_on(&mut connection, &["WATCH", &a, &b]).unwrap();
    query_on(&mut gateway.connection(), &["SET", &b, "5"]).unwrap();
    query_on(&mut connection, &["MULTI"]).unwrap();
    query_on(&mut connection, &["DEL", &a, &b]).unwrap();
    assert_eq!(query_on(&mut connection, &["EXEC"]), Ok(redis::Value::Nil));
    assert_eq!(
        query_on(&mut connection, &["MSETNX", &a, "2", &b, "2"]),
        Ok(redis::Value::Int(0))
    );
    assert_eq!(
        query_on(&mut connection, &["DEL", &a, &b]),
        Ok(redis::Value::Int(2))
    );
    assert_eq!(
        query_on(&mut connection, &["MSETNX", &a, "3", &b, "3"]),
        Ok(redis::Value::Int(1))
    );
    // Plain MSETs of both keys at once, plain MGETs of both: a reader
    // never sees the keys apart.
    never_apart(&gateway, &a, &b, false);
}

#[test]
fn users_of_a_users_file_authenticate_and_a_read_only_one_is_refused_writes() {
    let cluster = cluster();
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users.acl");
    std::fs::write(
        &users,
        "# who may use the gateway\n\
         user admin on >adm1n ~* +@all\n\
         user reader on >r3ad ~* +@read +@connection\n\
         user gone off >x ~* +@all\n",
    )
    .unwrap();
    let gateway = Gateway::start_with(&cluster, None, &["--users", users.to_str().unwrap()]);
    let as_user = |user: &str, password: &str, args: &[&str]| {
        let mut all = vec!["--user", user, "--pass", password, "--no-auth-warning"];
        all.extend_from_slice(args);
        gateway.cli(&all)
    };
    // No default user in the file: nothing runs before AUTH.
    assert!(gateway.cli(&["GET", "x"]).starts_with("NOAUTH"));
    assert!(gateway.cli(&["AUTH", "anything"]).starts_with("WRONGPASS"));
    assert!(
        gateway.cli(&["AUTH", "gone", "x"]).starts_with("WRONGPASS"),
        "off"
    );
    assert!(
        gateway
            .cli(&["AUTH", "admin", "wrong"])
            .starts_with("WRONGPASS")
    );
    assert!(as_user("admin", "wrong", &["GET", "x"]).starts_with("NOAUTH"));
    assert_eq!(as_user("admin", "adm1n", &["SET", "x", "1"]), "OK");
    assert_eq!(as_user("admin", "adm1n", &["ACL", "WHOAMI"]), "admin");
    // The read-only user reads, and is refused every write with Redis's
    // NOPERM, pipelined or not, in MULTI too.
    assert_eq!(as_user("reader", "r3ad", &["GET", "x"]), "1");
    assert_eq!(as_user("reader", "r3ad", &["PING"]), "PONG");
    for write in [
        &["SET", "x", "2"][..],
        &["INCR", "x"],
        &["DEL", "x"],
        &["FLUSHALL"],
    ] {
        let refused = as_user("reader", "r3ad", write);
        let name = write[0].to_lowercase();
        assert_eq!(
            refused,
            format!("NOPERM this user has no permissions to run the '{name}' command"),
            "{write:?}"
        );
    }
    assert!(
        as_user("reader", "r3ad", &["MULTI"]).starts_with("NOPERM"),
        "no +@transaction"
    );
    assert!(as_user("reader", "r3ad", &["ACL", "LIST"]).starts_with("NOPERM"));
    // With the redis crate: AUTH user pass, then a pipelined write refused.
    let client =
        redis::Client::open(format!("redis://reader:r3ad@127.0.0.1:{}/", gateway.port)).unwrap();
    let mut connection = client.get_connection().unwrap();
    let (value, refused): (Option<String>, redis::RedisResult<()>) = {
        let value = redis::cmd("GET").arg("x").query(&mut connection).unwrap();
        (
            value,
            redis::cmd("SET").arg("x").arg("3").query(&mut connection),
        )
    };
    assert_eq!(value.as_deref(), Some("1"));
    let error = refused.unwrap_err();
    assert_eq!(error.code(), Some("NOPERM"), "{error}");
    assert_eq!(
        as_user("admin", "adm1n", &["GET", "x"]),
        "1",
        "nothing written"
    );
    let listed = as_user("admin", "adm1n", &["ACL", "LIST"]);
    assert!(listed.contains("user reader on #"), "{listed}");
    assert!(listed.contains("+@read +@connection"), "{listed}");
    // A bad users file is refused at start, naming the file and the line.
    std::fs::write(&users, "user a on >x +@all\n").unwrap();
    let output = common::run_tern(&[
        "--cluster",
        cluster.map_path().to_str().unwrap(),
        "gateway",
        "--listen",
        "127.0.0.1:0",
        "--users",
        users.to_str().unwrap(),
    ]);
    assert!(!output.status.success());
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(
        text.contains("users.acl: line 1: user a must reach every key"),
        "{text}"
    );
}

/// A certificate authority and two certificates it signed (`tern certs`):
/// the gateway's, for 127.0.0.1, and a client's, each with its key, as PEM
/// files in `dir`.
fn tls_files(dir: &std::path::Path) -> [std::path::PathBuf; 5] {
    use tern_client::tls::Role;
    use tern_testbed::certs;
    certs::create_authority(dir).unwrap();
    let days = certs::CERTIFICATE_DAYS;
    certs::issue(
        dir,
        "server",
        Role::Gateway,
        &[std::net::Ipv4Addr::LOCALHOST],
        days,
    )
    .unwrap();
    certs::issue(dir, "client", Role::Client, &[], days).unwrap();
    [
        "ca.pem",
        "server.pem",
        "server.key",
        "client.pem",
        "client.key",
    ]
    .map(|name| dir.join(name))
}

#[test]
fn tls_serves_redis_cli_and_refuses_plain_connections_and_unknown_clients() {
    let cluster = cluster();
    let dir = tempfile::tempdir().unwrap();
    let [ca, server, server_key, client, client_key] = tls_files(dir.path());
    let path = |path: &std::path::PathBuf| path.to_str().unwrap().to_string();
    let (server, server_key) = (path(&server), path(&server_key));
    let serving = ["--tls-cert", &server, "--tls-key", &server_key];
    let gateway = Gateway::start_with(&cluster, None, &serving);
    let tls = |args: &[&str]| {
        let mut all = vec!["--tls", "--cacert", ca.to_str().unwrap()];
        all.extend_from_slice(args);
        gateway.cli(&all)
    };
    // redis-cli over TLS with `input` on its standard input: its output,
    // and what it said on its standard error.
    let tls_fed = |args: &[&str], input: &[u8]| {
        let mut cli = Command::new("redis-cli")
            .args([
                "-p",
                &gateway.port.to_string(),
                "--tls",
                "--cacert",
                ca.to_str().unwrap(),
            ])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        cli.stdin.take().unwrap().write_all(input).unwrap();
        let output = cli.wait_with_output().unwrap();
        let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).trim().to_string();
        (text(&output.stdout), text(&output.stderr))
    };
    let (said, complaint) = tls_fed(&["SET", "a", "hello"], b"");
    assert_eq!(said, "OK", "{complaint}");
    assert_eq!(tls(&["GET", "a"]), "hello");
    // A value of many TLS records, both ways.
    let big = "x".repeat(200_000);
    assert_eq!(tls_fed(&["-x", "SET", "big"], big.as_bytes()).0, "OK");
    assert_eq!(tls(&["STRLEN", "big"]), "200000");
    assert_eq!(tls(&["GET", "big"]), big);
    // Many commands pipelined through one connection.
    let commands: String = (0..1000).map(|n| format!("SET k{n} {n}\r\n")).collect();
    let (text, _) = tls_fed(&["--pipe"], commands.as_bytes());
    assert!(text.contains("errors: 0, replies: 1000"), "{text}");
    assert_eq!(tls(&["GET", "k999"]), "999");
    // A plain client is not served.
    assert_ne!(gateway.cli(&["PING"]), "PONG");
    // Client certificates required: one the authority signed is let in,
    // a client without one is not.
    let ca_path = path(&ca);
    let mut requiring = serving.to_vec();
    requiring.extend(["--tls-ca-cert", &ca_path]);
    let strict = Gateway::start_with(&cluster, None, &requiring);
    let with_cert = strict.cli(&[
        "--tls",
        "--cacert",
        &path(&ca),
        "--cert",
        &path(&client),
        "--key",
        &path(&client_key),
        "PING",
    ]);
    assert_eq!(with_cert, "PONG");
    assert_ne!(
        strict.cli(&["--tls", "--cacert", &path(&ca), "PING"]),
        "PONG"
    );
}
