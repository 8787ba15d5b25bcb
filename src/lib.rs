//! Chorus: a real-time communication and collaboration server. See ARCHITECTURE.md for the map.

pub mod access;
pub mod auth;
pub mod bench;
pub mod bus;
pub mod channel;
pub mod chat;
pub mod client;
pub mod config;
pub mod connection;
pub mod datadir;
pub mod docs;
pub mod http;
pub mod hub;
pub mod meetings;
pub mod metrics;
pub mod presence_service;
pub mod protocol;
pub mod server;
pub mod session;
pub mod sfu;
pub mod spaces;
pub mod store;
pub mod transport;
pub mod users;
pub mod web;
