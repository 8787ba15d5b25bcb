//! QUIC transport (placeholder until written).
use crate::config::Config;
use crate::server::Shared;
use std::sync::Arc;
pub fn endpoint(_config: &Config) -> anyhow::Result<quinn::Endpoint> { todo!() }
pub async fn accept_loop(_shared: Arc<Shared>, _endpoint: quinn::Endpoint) {}
