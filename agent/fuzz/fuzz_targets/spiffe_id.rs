//! `cargo xtask fuzz spiffe_id`: see `zgate_fuzz::spiffe_id`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| zgate_fuzz::spiffe_id(data));
