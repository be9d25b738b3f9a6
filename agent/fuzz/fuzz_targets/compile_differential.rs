//! `cargo xtask fuzz compile_differential`: see `zgate_fuzz::compile_differential`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| zgate_fuzz::compile_differential(data));
