//! The StreamJob operator. The controller lands with issue #6; until then this binary only
//! reports how many workers a plan would need, so the crate builds against the shared planner.

fn main() {
    eprintln!(
        "streamjob-operator {}: the controller is not implemented yet (see issue #6)",
        env!("CARGO_PKG_VERSION")
    );
    std::process::exit(2);
}
