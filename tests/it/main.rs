//! Integration tests: real servers on 127.0.0.1:0, real WebSocket and QUIC clients.

mod api;
mod bench;
mod chat;
mod cli;
mod docs;
mod fanout;
mod meet_browser;
mod meet_rtc;
mod meetings;
mod presence;
mod session;
mod sfu;
mod tidy;
mod util;
mod whip;
mod whip_browser;
mod ws_wire;
mod yjs_node;
