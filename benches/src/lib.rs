//! messs-benches: criterion benchmarks for the broker's hot paths, run with
//! `cargo bench -p messs-benches`. The library part is empty; see `benches/`.
