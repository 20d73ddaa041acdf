//! What sonde's fuzz targets check, kept out of `fuzz_targets/` so the seed
//! writer (`src/bin/seeds.rs`) replays every seed through the same checks
//! and the encoders can be unit-tested on stable (`cargo test`).
//!
//! Each target is one call into this crate; see `cargo xtask fuzz`.
pub mod amqp;
pub mod conversation;
pub mod ring;
pub mod sql;
