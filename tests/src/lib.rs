//! Helpers for zgate's privileged integration tests.
