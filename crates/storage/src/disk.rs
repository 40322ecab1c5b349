//! The `Disk` abstraction: the real file system, and a faulty disk for crash tests.
