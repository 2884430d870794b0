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
        let mut command = common::tern();
        command.arg("--cluster").arg(cluster.map_path()).args([
            "gateway",
            "--listen",
            "127.0.0.1:0",
        ]);
        if let Some(password) = password {
            command.args(["--requirepass", password]);
        }
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
        redis::Client::open(format!("redis://127.0.0.1:{}/", self.port))
            .unwrap()
            .get_connection()
            .unwrap()
    }
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
    assert_eq!(cli(&["COMMAND", "COUNT"]), "0");
    assert_eq!(cli(&["QUIT"]), "OK");
}

#[test]
fn a_client_library_gets_redis_semantics_and_pipelining() {
    let cluster = cluster();
    let gateway = Gateway::start(&cluster, None);
    let mut connection = gateway.connection();
    let query = |connection: &mut redis::Connection, args: &[&str]| -> redis::Value {
        let mut command = redis::cmd(args[0]);
        for arg in &args[1..] {
            command.arg(*arg);
        }
        command.query(connection).unwrap()
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
        cli(&["FLUSHALL"]),
        "ERR unknown command 'FLUSHALL', with args beginning with:"
    );
    assert_eq!(
        cli(&["GET"]),
        "ERR wrong number of arguments for 'get' command"
    );
    let big = "v".repeat(tern_wire::VALUE_LEN_MAX + 1);
    assert_eq!(
        cli(&["SET", "k", &big]),
        "ERR value of 1025 bytes exceeds the limit of 1024 bytes"
    );
    cli(&["SET", "t", "text"]);
    assert_eq!(
        cli(&["INCR", "t"]),
        "ERR value is not an integer or out of range"
    );
    assert_eq!(
        cli(&["INCRBY", "t", "x"]),
        "ERR value is not an integer or out of range"
    );
    assert!(cli(&["SET", "k", "v", "EX", "10"]).contains("not supported by Tern"));
    assert_eq!(cli(&["SELECT", "3"]), "ERR DB index is out of range");
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
