//! zgate: Istio ambient mode's L4 security policy (AuthorizationPolicy and
//! PeerAuthentication, as ztunnel enforces them) compiled into BPF maps and
//! enforced in the kernel at connect and accept time.
#![deny(unsafe_code)]

pub mod agent;
pub mod bpf;
pub mod ca;
pub mod check;
pub mod cli;
pub mod client;
pub mod compile;
pub mod config;
pub mod hbone;
pub mod identity;
pub mod policy;
pub mod run;
pub mod sock_diag;
mod sys;
pub mod tls;
pub mod workload;
