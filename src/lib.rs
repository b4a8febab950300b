//! blockd: a block-storage daemon. Volumes live in backends (sparse files
//! today), their metadata in SQLite, and two REST dialects drive them.

pub mod api;
pub mod backend;
pub mod cli;
pub mod clock;
pub mod config;
pub mod copy;
pub mod export;
pub mod failpoint;
pub mod images;
pub mod keystone;
pub mod ops;
pub mod server;
pub mod service;
pub mod store;
