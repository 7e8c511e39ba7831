//! Every workload, one module each. To add one, write a module with a `cases()` function
//! and list it in [`all`] (see `bench/README.md`).

mod common;
mod connection;
mod connection_lib;
mod large_parent;
mod pool;
mod pool_lib;
mod queue;
mod queue_lib;
mod start_join;
mod sync;
mod sync_lib;

use crate::workload::Case;

/// All cases, in the order the table shows them.
pub(crate) fn all() -> Vec<Case> {
    let mut cases = Vec::new();
    cases.extend(start_join::cases());
    cases.extend(large_parent::cases());
    cases.extend(connection::cases());
    cases.extend(sync::cases());
    cases.extend(queue::cases());
    cases.extend(pool::cases());
    cases
}
