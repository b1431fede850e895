//! Pure construction of the Kubernetes objects each resource is made of. Nothing here
//! talks to the API server: a resource (plus what was read about it) goes in, objects come
//! out, so what a user would check in the generated objects is tested directly.

pub mod backend;
pub mod banyandb;
pub mod collector;
pub mod inject;
mod meta;
pub mod oapserver;
mod podspec;
pub mod pool;
mod rbac;
pub mod rover;
pub mod ui;

pub use meta::{ObjectMetaExt, child_meta, owner_reference, selector_string};
