//! Stateful fuzzing of the whole broker on a paused clock, one thread (see
//! `broker_scenario`).
#![no_main]

mod broker_scenario;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
    else {
        return;
    };
    rt.block_on(broker_scenario::run(data, broker_scenario::Clock::Paused));
});
