//! Library target, empty on purpose: it lets `residency-daemon` declare this
//! crate as a build-dependency so that cargo tracks changes to it. The kernel
//! programs are in `main.rs`.
#![no_std]
