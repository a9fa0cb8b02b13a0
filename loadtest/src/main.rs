//! messs-load: the load-test harness (any MQTT broker, any transport).
//!
//! Not built yet: the load-test issue fills this binary. It exits with an error so no script
//! mistakes it for a measurement.

fn main() -> std::process::ExitCode {
    eprintln!("messs-load: not implemented yet (see the load-test issue)");
    std::process::ExitCode::from(2)
}
