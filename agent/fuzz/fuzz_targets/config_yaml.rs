//! `cargo xtask fuzz config_yaml`: see `zgate_fuzz::config_yaml`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| zgate_fuzz::config_yaml(data));
