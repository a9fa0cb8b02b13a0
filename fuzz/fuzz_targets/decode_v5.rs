#![no_main]
//! Fuzz `decode` at protocol level 5.0.

mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    common::fuzz_decode(data, messs_codec::Protocol::V5);
});
