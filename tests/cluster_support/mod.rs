//! Fixtures of the cluster suite: a fake cloud every node shares, and a proxy that cuts a node
//! off from PostgreSQL.

pub mod cloud;
pub mod proxy;
