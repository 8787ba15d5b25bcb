//! The sans-IO core of Chorus meetings: signalling between participants (join, tracks,
//! offer/answer, trickle ICE, mute, leave) and, later, the SFU room. It never touches sockets,
//! clocks or runtimes: the server feeds it events with the current time and carries out what it
//! returns.
//!
//! Built so far: ICE server credentials for TURN (`turn`).

pub mod turn;
