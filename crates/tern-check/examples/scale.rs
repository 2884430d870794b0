//! Times the checker on a long, 8-way concurrent history of one key:
//! `cargo run --release -p tern-check --example scale -- 20000`.
use tern_check::{Input, Operation, Output, Verdict, check};

fn main() {
    let count: u64 = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(20_000);
    let mut value: Option<(u64, Vec<u8>)> = None;
    let mut history = Vec::new();
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut random = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for index in 0..count {
        // Each operation spans about 8 others around its linearization point.
        let point = 1_000 + 100 * index;
        let call = point - random() % 400;
        let ret = point + random() % 400;
        let (input, output) = if random() % 2 == 0 {
            (Input::Get, Output::Get(value.clone()))
        } else {
            let new = index.to_le_bytes().to_vec();
            value = Some((index + 1, new.clone()));
            (
                Input::Put { value: new },
                Output::Put { version: index + 1 },
            )
        };
        history.push(Operation {
            client: index % 8,
            key: b"k".to_vec(),
            input,
            output,
            call,
            ret: Some(ret),
        });
    }
    let start = std::time::Instant::now();
    let verdict = check(&history);
    println!(
        "{count} operations: {:?} in {:?}",
        verdict == Verdict::Linearizable,
        start.elapsed()
    );
}
