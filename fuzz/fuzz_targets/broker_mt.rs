//! Stateful fuzzing of the whole broker on two worker threads in real time (see
//! `broker_scenario`): connection tasks, takeovers and session-table transitions interleave
//! for real.
#![no_main]

mod broker_scenario;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(rt) = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    else {
        return;
    };
    rt.block_on(broker_scenario::run(data, broker_scenario::Clock::Threads));
});
