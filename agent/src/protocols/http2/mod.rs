//! HTTP/2 and gRPC: framing per direction ([`frame`]), streams and HPACK
//! per connection ([`conn`], decoding with the `loona-hpack` crate), gRPC's
//! names, status and message counts ([`grpc`]).
//!
//! A connection is recognised by the client's preface, so only connections
//! seen from their start are followed: one already open when sonde started
//! has a dynamic table sonde never saw, and is left alone (counted as
//! unrecognised). Header blocks must all be seen: the kernel copies whole
//! frames on these connections (`Spec::whole_frames`), and a lost or
//! undecodable block ends the connection's parsing (counted as a parse
//! error and `gave_up`), never a guess. DATA is counted, not kept.
pub mod conn;
pub mod frame;
pub mod grpc;
pub mod protocol;

pub use conn::{H2Connection, H2Info};
pub use grpc::GrpcCall;
pub use protocol::SPEC;

#[cfg(test)]
mod tests;
