//! The real JobControl client ([`GrpcJobControl`]) against a fake worker 0 served with the
//! generated server half of worker/proto/control.proto: the bearer token, the request fields,
//! the mapping of the answers, and the errors the reconciler tells apart.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use streamjob_operator::control::proto::job_control_server::{
    JobControl as JobControlService, JobControlServer,
};
use streamjob_operator::control::proto::{
    SavepointReply, SavepointRequest, Snapshot as ProtoSnapshot, StatusReply, StatusRequest,
};
use streamjob_operator::control::{
    ControlError, GrpcJobControl, JobControl, JobReport, RunState, Snapshot, Target,
};
use tonic::{Request, Response, Status};

const TOKEN: &str = "secret-token";
const SAVEPOINT: &str = "file:///ckpt/savepoints/savepoint-7";

#[derive(Default)]
struct Worker {
    calls: Arc<Mutex<Vec<String>>>,
    savepoint_fails: bool,
}

fn authorized<T>(request: &Request<T>) -> Result<(), Status> {
    let auth = request
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok());
    match auth == Some(&format!("Bearer {TOKEN}")) {
        true => Ok(()),
        false => Err(Status::unauthenticated("bad token")),
    }
}

#[tonic::async_trait]
impl JobControlService for Worker {
    async fn trigger_savepoint(
        &self,
        request: Request<SavepointRequest>,
    ) -> Result<Response<SavepointReply>, Status> {
        authorized(&request)?;
        let r = request.into_inner();
        self.calls.lock().unwrap().push(format!(
            "TriggerSavepoint stop={} directory={:?}",
            r.stop, r.directory
        ));
        if self.savepoint_fails {
            return Err(Status::aborted("checkpoint 8 declined by task n[1]"));
        }
        Ok(Response::new(SavepointReply {
            savepoint: Some(ProtoSnapshot {
                id: 7,
                path: SAVEPOINT.into(),
                completed_ms: 1_700_000_007_000,
            }),
        }))
    }

    async fn get_status(
        &self,
        request: Request<StatusRequest>,
    ) -> Result<Response<StatusReply>, Status> {
        authorized(&request)?;
        self.calls.lock().unwrap().push("GetStatus".into());
        Ok(Response::new(StatusReply {
            state: "restarting".into(),
            last_checkpoint: Some(ProtoSnapshot {
                id: 12,
                path: "file:///ckpt/wc-uid1-2/chk-12".into(),
                completed_ms: 1_700_000_012_000,
            }),
            // An empty snapshot is no snapshot.
            last_savepoint: Some(ProtoSnapshot::default()),
            restored_from: String::new(),
            failure: "task n[1]: division by zero".into(),
            restarts: 2,
        }))
    }
}

/// Serves `worker` on a loopback port; returns the client pointed at it.
async fn serve(worker: Worker) -> GrpcJobControl {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(JobControlServer::new(worker))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    GrpcJobControl {
        address: Some(address),
        ..GrpcJobControl::default()
    }
}

fn target(token: &str) -> Target {
    Target {
        namespace: "prod".into(),
        job: "wc".into(),
        token: token.into(),
    }
}

#[tokio::test]
async fn savepoints_and_status_go_to_worker_0_with_the_job_token() {
    let worker = Worker::default();
    let calls = worker.calls.clone();
    let client = serve(worker).await;

    let savepoint = client
        .trigger_savepoint(&target(TOKEN), true)
        .await
        .unwrap();
    assert_eq!(
        savepoint,
        Snapshot {
            id: 7,
            path: SAVEPOINT.into(),
            completed_ms: 1_700_000_007_000
        }
    );
    assert_eq!(savepoint.info().time, "2023-11-14T22:13:27Z");

    let report = client.status(&target(TOKEN)).await.unwrap();
    assert_eq!(
        report,
        JobReport {
            state: RunState::Restarting,
            last_checkpoint: Some(Snapshot {
                id: 12,
                path: "file:///ckpt/wc-uid1-2/chk-12".into(),
                completed_ms: 1_700_000_012_000
            }),
            last_savepoint: None,
            restored_from: None,
            failure: Some("task n[1]: division by zero".into()),
            metrics: None,
            restarts: 2,
        }
    );
    assert_eq!(
        *calls.lock().unwrap(),
        [r#"TriggerSavepoint stop=true directory="""#, "GetStatus"]
    );
}

#[tokio::test]
async fn a_failed_savepoint_and_a_wrong_token_are_failures_of_the_job() {
    let client = serve(Worker {
        savepoint_fails: true,
        ..Worker::default()
    })
    .await;
    let err = client
        .trigger_savepoint(&target(TOKEN), false)
        .await
        .unwrap_err();
    assert_eq!(
        err,
        ControlError::Failed("Aborted: checkpoint 8 declined by task n[1]".into())
    );
    let err = client.status(&target("wrong")).await.unwrap_err();
    assert!(
        matches!(&err, ControlError::Failed(m) if m.contains("Unauthenticated")),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_worker_0_that_does_not_listen_is_unreachable() {
    // A port that was free a moment ago: connection refused.
    let address = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let client = GrpcJobControl {
        address: Some(address.clone()),
        connect_timeout: Duration::from_secs(2),
        ..GrpcJobControl::default()
    };
    match client.status(&target(TOKEN)).await {
        Err(ControlError::Unreachable { address: a, .. }) => assert_eq!(a, address),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        target(TOKEN).address(),
        "wc-worker-0.wc-workers.prod.svc:6121"
    );
}
