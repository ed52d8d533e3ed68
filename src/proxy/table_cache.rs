//! Each worker thread's view of the current routing table. Cloning the
//! `Arc` that `ArcSwap::load_full` returns writes its reference count, a
//! cache line every worker shares, twice a request. Instead each thread
//! keeps its own `Arc` around the table's: a request clones that one (a
//! line only this thread writes), and the thread checks the shared
//! pointer with one relaxed load (`arc_swap::Cache`), taking the new
//! table on its first request after a reload.

use std::cell::RefCell;
use std::ops::Deref;
use std::sync::Arc;

use arc_swap::{ArcSwap, Cache};

use super::Shared;
use crate::routing::RoutingTable;

/// The table of a [`Shared`], for `arc_swap::Cache`.
struct Source(Arc<Shared>);

impl Deref for Source {
    type Target = ArcSwap<RoutingTable>;

    fn deref(&self) -> &ArcSwap<RoutingTable> {
        &self.0.table
    }
}

/// A worker's handle on a table: the outer `Arc` is the worker's own, so
/// cloning it writes a count only that worker writes.
#[allow(clippy::redundant_allocation)]
pub type Handle = Arc<Arc<RoutingTable>>;

/// A thread's cache of one `Shared`'s table.
struct Local {
    cache: Cache<Source, Arc<RoutingTable>>,
    /// This thread's own handle on the cached table.
    mine: Handle,
}

thread_local! {
    static LOCAL: RefCell<Option<Local>> = const { RefCell::new(None) };
}

/// The current table, as a handle only this thread counts on. A thread
/// serving another `Shared` (tests run several proxies in one process)
/// starts its cache again.
pub fn current(shared: &Arc<Shared>) -> Handle {
    LOCAL.with(|local| {
        let mut local = local.borrow_mut();
        let local = match &mut *local {
            Some(l) if std::ptr::eq(l.cache.arc_swap(), &shared.table) => l,
            slot => {
                let mut cache = Cache::new(Source(shared.clone()));
                let mine = Arc::new(cache.load().clone());
                slot.insert(Local { cache, mine })
            }
        };
        let latest = local.cache.load();
        if !Arc::ptr_eq(latest, &*local.mine) {
            local.mine = Arc::new(latest.clone());
        }
        local.mine.clone()
    })
}
