//! Progressive rollout with automatic rollback: a route's canary climbs a
//! plan of weights while the verdict on its evidence says `pass`, and goes
//! back to 0 the moment it says `fail`.
//!
//! - [`machine`]: the state machine, a pure function of state and evidence;
//! - [`store`]: its state on disk, written atomically;
//! - [`evidence`]: the counts a step is judged on, and the verdict;
//! - [`controller`]: the rollouts of a running proxy, kept in line with the
//!   config file and driven by the app's ticker and admin commands;
//! - [`notify`]: the event of each transition, POSTed to a webhook;
//! - [`cli`]: `cutover rollout status|pause|resume|promote|abort`.

pub mod cli;
pub mod controller;
pub mod evidence;
pub mod machine;
pub mod notify;
pub mod store;

pub use controller::Rollouts;
