//! `chorus-proto`: generated code for the etcd v3 API and the Chorus peer protocol.
