//! Generated code for the `switchboard.v1` gRPC contract. This crate only
//! generates: conversions to and from the domain live in the server.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

/// `switchboard.v1`: messages, clients and servers.
pub mod v1 {
    tonic::include_proto!("switchboard.v1");
}

/// The encoded file descriptor set, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/switchboard_descriptor.bin"));
