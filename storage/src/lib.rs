//! messs-storage: durable state for the broker (RocksDB column families, a batching writer,
//! retention, checkpoints, encryption at rest).
//!
//! Not built yet: the durable-storage issue fills this crate. Until then the broker keeps
//! sessions and retained messages in memory only, and says so in its docs; nothing here
//! pretends to persist anything.
