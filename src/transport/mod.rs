//! Transport shells: they move frames between sockets and `connection::run`, nothing else.

pub mod quic;
pub mod ws;
pub mod wsframe;
