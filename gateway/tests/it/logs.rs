//! `LOG_FORMAT=json`: every line a JSON object, one span per request and
//! one per job stage, so that a log system can follow a job across processes.

use std::time::Duration;

use crate::harness::{self, Options, Stack};

fn json_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_a_span_per_request_and_per_job() {
    let env = vec![("LOG_FORMAT".to_owned(), "json".to_owned())];
    let stack = Stack::start(Options { workers: 1, env, ..Default::default() }).await;
    let photo = std::fs::read(harness::fixture("astronaut.png")).unwrap();
    let fields = [("message", "Logs."), ("voice_profile_id", "en_joe_male"), ("resolution", "512x910")];
    let (status, body) = harness::submit(&stack, photo, "a.png", &fields).await;
    assert_eq!(status, 202);
    let task_id = body["task_id"].as_str().unwrap().to_owned();
    let done = harness::wait_done(&stack, &task_id, Duration::from_secs(120)).await;
    assert_eq!(done["status"], "SUCCESS");
    tokio::time::sleep(Duration::from_millis(200)).await;

    let gateway = json_lines(&stack.dir.path().join("gateway.log"));
    let request = gateway
        .iter()
        .find(|l| l["span"]["name"] == "request" && l["span"]["uri"] == "/api/video/generate")
        .unwrap_or_else(|| panic!("no request span for the upload in {gateway:#?}"));
    assert_eq!(request["span"]["method"], "POST");
    let finished = gateway
        .iter()
        .find(|l| l["span"]["uri"] == "/api/video/generate" && l["fields"]["status"] == 202)
        .expect("a line with the response status inside the request's span");
    assert!(finished["fields"]["latency"].as_str().unwrap().ends_with("ms"), "{finished}");
    assert!(gateway.iter().any(|l| l["fields"]["task_id"] == task_id.as_str()), "the job's id is logged");

    let worker = json_lines(&stack.dir.path().join("worker-0.log"));
    for stage in ["image", "voice", "render"] {
        assert!(
            worker.iter().any(|l| l["span"]["name"] == "job"
                && l["span"]["task_id"] == task_id.as_str()
                && l["span"]["stage"] == stage),
            "no {stage} job span for {task_id}"
        );
    }
}
