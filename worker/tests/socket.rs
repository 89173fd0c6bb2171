//! Socket source: lines from a real TCP server, low latency while the connection is open,
//! clean end of stream when the server closes, clear error when nobody listens.

use std::io::Write;
use std::net::TcpListener;
use std::sync::mpsc;
use std::time::Duration;

use streamjob::{BoxError, Sink, SinkWriter, StreamExecutionEnvironment, SubtaskContext};

struct ChannelSink(mpsc::Sender<(String, u64)>);
struct ChannelWriter(mpsc::Sender<(String, u64)>);
impl Sink<(String, u64)> for ChannelSink {
    fn create_writer(
        &self,
        _: &SubtaskContext,
    ) -> Result<Box<dyn SinkWriter<(String, u64)>>, BoxError> {
        Ok(Box::new(ChannelWriter(self.0.clone())))
    }
}
impl SinkWriter<(String, u64)> for ChannelWriter {
    fn write(&mut self, item: (String, u64)) -> Result<(), BoxError> {
        self.0.send(item)?;
        Ok(())
    }
}

#[test]
fn socket_word_count_prints_as_you_type_and_ends_when_the_server_closes() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    let job = std::thread::spawn(move || {
        let env = StreamExecutionEnvironment::get_execution_environment();
        env.set_parallelism(2);
        env.socket_text_stream("127.0.0.1", port)
            .flat_map(|line: String, out| {
                for w in line.split_whitespace() {
                    out.collect((w.to_lowercase(), 1u64));
                }
            })
            .key_by_ref(|(w, _): &(String, u64)| w.as_str())
            .reduce(|(w, a), (_, b)| (w, a + b))
            .sink_to(ChannelSink(tx));
        env.execute("socket wordcount")
    });
    let (mut conn, _) = listener.accept().unwrap();
    conn.write_all(b"hello world\n").unwrap();
    conn.flush().unwrap();
    // The connection stays open: results must still come out (buffer timeout), not only at
    // the end of the stream.
    let mut first = vec![
        rx.recv_timeout(Duration::from_secs(5))
            .expect("first result while typing"),
        rx.recv_timeout(Duration::from_secs(5))
            .expect("second result while typing"),
    ];
    first.sort();
    assert_eq!(
        first,
        vec![("hello".to_string(), 1), ("world".to_string(), 1)]
    );
    conn.write_all(b"Hello again\r\npartial").unwrap();
    drop(conn);
    job.join().unwrap().unwrap();
    let mut rest: Vec<_> = rx.try_iter().collect();
    rest.sort();
    assert_eq!(
        rest,
        vec![
            ("again".to_string(), 1),
            ("hello".to_string(), 2),
            ("partial".to_string(), 1)
        ]
    );
}

#[test]
fn nobody_listening_is_a_clear_error() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let env = StreamExecutionEnvironment::get_execution_environment();
    env.socket_text_stream("127.0.0.1", port).print();
    let err = env.execute("no server").unwrap_err().to_string();
    assert!(
        err.contains(&format!("cannot connect to 127.0.0.1:{port}")),
        "{err}"
    );
    assert!(
        err.contains("socket 127.0.0.1"),
        "names the source operator: {err}"
    );
}

#[test]
fn with_retry_the_source_waits_for_the_server_to_come_up() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    let server = std::thread::spawn(move || {
        // The server comes up late (a fault, not a wait for a condition): the source
        // retries from its start, so any delay under its 3 s retry window gives the same
        // records.
        std::thread::sleep(Duration::from_millis(1200));
        let l = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let (mut c, _) = l.accept().unwrap();
        c.write_all(b"a\nb\n").unwrap();
    });
    let env = StreamExecutionEnvironment::get_execution_environment();
    // Retries for up to 5 s; after the server closes, it keeps retrying, so bound the job by
    // a short retry window instead: 3 s.
    let out = env
        .socket_text_stream_with_retry("127.0.0.1", port, 3)
        .collect_sink();
    env.execute("retry").unwrap();
    server.join().unwrap();
    assert_eq!(out.take(), vec!["a".to_string(), "b".to_string()]);
}
