//! Length-prefixed framing for stream transports (placeholder until written).
