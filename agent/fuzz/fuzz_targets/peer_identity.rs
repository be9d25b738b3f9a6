//! `cargo xtask fuzz peer_identity`: see `zgate_fuzz::peer_identity`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| zgate_fuzz::peer_identity(data));
