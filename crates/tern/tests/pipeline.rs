//! The pipelined client against a real cluster: many requests in flight from
//! one socket, each answered once and correctly.

mod common;

use common::TestCluster;
use tern_client::{ClientOptions, PIPELINE_DEPTH_MAX, Pipeline, Request};
use tern_wire::Status;

#[test]
fn a_full_pipeline_of_writes_then_reads_completes_with_the_right_answers() {
    let cluster = TestCluster::up(2, 3);
    let mut pipeline = Pipeline::new(cluster.map.clone(), ClientOptions::default()).unwrap();
    let keys: Vec<Vec<u8>> = (0..PIPELINE_DEPTH_MAX)
        .map(|i| format!("pipelined-{i}").into_bytes())
        .collect();
    for (token, key) in keys.iter().enumerate() {
        pipeline
            .submit(Request::Put(key), key, token as u64)
            .unwrap();
    }
    assert!(
        pipeline.submit(Request::Get, b"one-too-many", 99).is_err(),
        "depth is bounded"
    );
    let mut completed = Vec::new();
    while pipeline.in_flight() > 0 {
        pipeline.poll(&mut completed).unwrap();
    }
    let mut tokens: Vec<u64> = completed.iter().map(|c| c.token).collect();
    tokens.sort();
    assert_eq!(
        tokens,
        (0..PIPELINE_DEPTH_MAX as u64).collect::<Vec<_>>(),
        "each write answered once"
    );
    assert!(
        completed
            .iter()
            .all(|c| c.result.as_ref().unwrap().status == Status::Ok)
    );

    completed.clear();
    for (token, key) in keys.iter().enumerate() {
        pipeline.submit(Request::Get, key, token as u64).unwrap();
    }
    while pipeline.in_flight() > 0 {
        pipeline.poll(&mut completed).unwrap();
    }
    for completion in &completed {
        let reply = completion.result.as_ref().unwrap();
        assert_eq!(reply.status, Status::Ok);
        assert_eq!(
            reply.value, keys[completion.token as usize],
            "each read got its own key's value"
        );
    }
    assert_eq!(completed.len(), PIPELINE_DEPTH_MAX);
}
