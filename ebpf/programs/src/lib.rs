//! Exists so ztunnel can name this crate as a build-dependency (cargo then
//! rebuilds ztunnel when the programs change); the programs are in `main.rs`.
#![no_std]
