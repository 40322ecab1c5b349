//! The segmented write-ahead log shared by all Raft groups of a node.
