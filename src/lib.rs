//! regfs as a library: the binary (`main.rs`) is the command line over it, and
//! fuzz targets and fast tests reach the parsers and the core through it.

pub mod config;
pub mod contents;
pub mod core;
pub mod daemon;
pub mod error;
pub mod fuse;
pub mod metrics;
pub mod oci;
pub mod registry;
pub mod stats;
pub mod status;
pub mod store;
