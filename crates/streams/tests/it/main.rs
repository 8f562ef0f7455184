//! Integration tests of the streams runtime against a real Redis Cluster.

mod backpressure;
mod bad_input;
mod common;
mod crash;
mod dlq;
mod failover;
mod faults;
mod inspection;
mod ordering;
mod recovery;
