//! The operator/worker contract: real `streamjob worker` processes started with exactly the
//! args and env the operator's StatefulSet gives its pods (pod names, namespace, token, the
//! mounted spec, the peer DNS pattern) run the job. Only what cannot exist here is mapped:
//! each pod's DNS name becomes its own loopback address (127.0.<i>.1).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use streamjob::crds::graph::to_logical_graph;
use streamjob::crds::validate::parse_job;
use streamjob::net::health_proto::HealthCheckRequest;
use streamjob::net::health_proto::health_check_response::ServingStatus;
use streamjob::net::health_proto::health_client::HealthClient;
use streamjob_operator::resources::{self, Defaults};

mod common;

use common::{BIN, wait_for, wait_until};

struct Pods(Vec<Child>);

impl Drop for Pods {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn finals(dir: &Path) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap() {
        // Files are read while workers append to them: a last line may be partial.
        for line in std::fs::read_to_string(e.unwrap().path()).unwrap().lines() {
            if let Ok((w, c)) = serde_json::from_str::<(String, u64)>(line) {
                let e = m.entry(w).or_insert(0);
                *e = (*e).max(c);
            }
        }
    }
    m
}

/// What the pod's `grpc` probe of `service` sees (the operator probes `liveness` and
/// `readiness`).
async fn probe(addr: &str, service: &str) -> Option<ServingStatus> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .ok()?
        .connect()
        .await
        .ok()?;
    let mut client = HealthClient::new(channel);
    let r = client
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .ok()?;
    ServingStatus::try_from(r.into_inner().status).ok()
}

#[test]
fn workers_started_like_the_statefulset_pods_run_the_job() {
    let dir = common::tmp_dir("pods", "wc");
    std::fs::create_dir_all(dir.join("out")).unwrap();
    let words = ["alpha", "beta", "gamma", "delta", "alpha", "beta", "alpha"];
    let text: String = (0..3000)
        .map(|i| format!("{} {}\n", words[i % 7], words[(i * 3) % 7]))
        .collect();
    std::fs::write(dir.join("in.txt"), &text).unwrap();
    let mut expected = BTreeMap::new();
    for w in text.split_whitespace() {
        *expected.entry(w.to_string()).or_insert(0u64) += 1;
    }
    let mut job = parse_job(&format!(
        "apiVersion: streamjob.dev/v1alpha1
kind: StreamJob
metadata: {{name: wc, namespace: prod}}
spec:
  parallelism: 3
  checkpointing: {{intervalMs: 50, directory: {chk}}}
  steps:
    - {{name: lines, source: {{file: {{path: {input}}}}}}}
    - {{name: words, flatMap: {{expr: value.words()}}}}
    - {{name: pairs, map: {{expr: '[value, 1]'}}}}
    - {{name: by, keyBy: {{expr: 'value[0]'}}}}
    - {{name: counts, reduce: {{expr: '[acc[0], acc[1] + value[1]]'}}}}
    - {{name: out, sink: {{file: {{path: {out}}}}}}}
",
        input = dir.join("in.txt").display(),
        out = dir.join("out/counts").display(),
        chk = dir.join("chk").display()
    ))
    .unwrap();
    job.metadata.uid = Some("uid".into());
    let plan = to_logical_graph(&job).plan().unwrap();
    let children = resources::children(
        &job,
        &plan,
        &Defaults {
            worker_image: "x".into(),
            image_pull_policy: None,
            worker_resources: None,
        },
    )
    .unwrap();
    // The mounted ConfigMap.
    let spec_file = dir.join(resources::SPEC_FILE);
    std::fs::write(
        &spec_file,
        &children.config_map.data.as_ref().unwrap()[resources::SPEC_FILE],
    )
    .unwrap();

    let sts = children.stateful_set.spec.as_ref().unwrap();
    let replicas = sts.replicas.unwrap();
    assert_eq!(replicas, 3);
    let container = &sts.template.spec.as_ref().unwrap().containers[0];
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut pods = Pods(Vec::new());
    let mut run_id = None;
    for i in 0..replicas {
        let pod = format!(
            "{}-{i}",
            children.stateful_set.metadata.name.as_deref().unwrap()
        );
        let mut args = container.args.clone().unwrap();
        assert_eq!(
            args[1],
            format!("{}/{}", resources::SPEC_DIR, resources::SPEC_FILE)
        );
        args[1] = spec_file.display().to_string();
        for (flag, value) in [
            ("--port", port.to_string()),
            ("--peer-pattern", "127.0.{i}.1:{port}".into()),
        ] {
            let at = args.iter().position(|a| a == flag).unwrap();
            args[at + 1] = value;
        }
        args.extend(["--listen".into(), format!("127.0.{i}.1:{port}")]);
        let mut cmd = Command::new(BIN);
        cmd.args(&args)
            .env_clear()
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for e in container.env.as_ref().unwrap() {
            let value = match (&e.value, &e.value_from) {
                (Some(v), _) => v.clone(),
                (None, Some(from))
                    if from
                        .field_ref
                        .as_ref()
                        .is_some_and(|f| f.field_path == "metadata.name") =>
                {
                    pod.clone()
                }
                (None, Some(from))
                    if from
                        .field_ref
                        .as_ref()
                        .is_some_and(|f| f.field_path == "metadata.namespace") =>
                {
                    "prod".into()
                }
                (None, Some(from)) if from.secret_key_ref.is_some() => "token-from-secret".into(),
                other => panic!(
                    "env {} has a source this test does not map: {other:?}",
                    e.name
                ),
            };
            if e.name == "STREAMJOB_RUN_ID" {
                run_id = Some(value.clone());
            }
            cmd.env(&e.name, value);
        }
        pods.0.push(cmd.spawn().unwrap());
    }
    wait_until(Duration::from_secs(60), "job did not finish", || {
        for p in &mut pods.0 {
            assert!(p.try_wait().unwrap().is_none(), "a worker exited");
        }
        finals(&dir.join("out")) == expected
    });
    // The job is done; the pods stay up (--idle-after-finish) and report ready to the
    // readiness probe the StatefulSet defines.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for i in 0..replicas {
        let addr = format!("127.0.{i}.1:{port}");
        wait_until(
            Duration::from_secs(20),
            format!("worker {i} never reported ready"),
            || rt.block_on(probe(&addr, "readiness")) == Some(ServingStatus::Serving),
        );
        assert_eq!(
            rt.block_on(probe(&addr, "liveness")),
            Some(ServingStatus::Serving)
        );
        assert!(
            pods.0[i as usize].try_wait().unwrap().is_none(),
            "worker {i} exited"
        );
    }
    // Checkpoints went to the run directory the operator named, and worker 0's job control
    // API (which the operator polls) reports the job finished with its last checkpoint.
    let run_id = run_id.expect("the operator sets STREAMJOB_RUN_ID");
    let run_dir = dir.join("chk").join(&run_id);
    assert!(
        std::fs::read_dir(&run_dir)
            .unwrap()
            .flatten()
            .any(|e| e.path().join("_metadata").is_file()),
        "no complete checkpoint in {}",
        run_dir.display()
    );
    let get_status = || {
        rt.block_on(async {
            use streamjob::net::control_proto::StatusRequest;
            use streamjob::net::control_proto::job_control_client::JobControlClient;
            let mut client = JobControlClient::connect(format!("http://127.0.0.1:{port}"))
                .await
                .unwrap();
            let mut request = tonic::Request::new(StatusRequest {});
            request
                .metadata_mut()
                .insert("authorization", "Bearer token-from-secret".parse().unwrap());
            client.get_status(request).await.unwrap().into_inner()
        })
    };
    // The sinks' output is complete before the final checkpoint ends the job: poll.
    let status = wait_for(
        Duration::from_secs(20),
        "the job to report finished",
        || {
            let s = get_status();
            (s.state == "finished").then_some(s)
        },
    );
    assert!(
        status
            .last_checkpoint
            .is_some_and(|c| c.path.starts_with(&run_dir.display().to_string())),
    );
}
