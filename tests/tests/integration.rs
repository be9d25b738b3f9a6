//! Privileged integration tests: one binary, run by `cargo xtask test`.
