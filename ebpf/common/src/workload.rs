//! `ZG_WORKLOADS`: cgroup id → enrolled workload. A process belongs to a
//! workload when its cgroup is the workload's cgroup.

pub const MAP: &str = "ZG_WORKLOADS";
pub const MAX_ENTRIES: u32 = 16_384;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Workload {
    /// Numeric workload id, the key of the per-workload policy look-up.
    pub id: u32,
    /// Numeric identity (`spiffe://td/ns/NS/sa/SA`) of the workload.
    pub identity: u32,
}
const _: () = assert!(size_of::<Workload>() == 8);
