//! `cargo xtask fuzz hbone_request`: see `zgate_fuzz::hbone_request`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| zgate_fuzz::hbone_request(data));
