//! rovl: a user-space overlay filesystem for Linux containers that never
//! loses, misplaces or steals a writeback error.
//!
//! Layout: [`layers`] is the stack on disk (pure functions over directory
//! fds); [`copy_up`] builds upper copies; [`overlay`] is the merged view and
//! its operations; [`writeback`] tracks dirty data and writeback errors;
//! [`fuse`] is the only module that knows FUSE; [`cli`] and [`mount`] parse
//! the command line and set up the mount; [`syslog`] carries the daemon's
//! log when it has no log file.

#![deny(unsafe_op_in_unsafe_fn)]

pub mod cli;
pub mod commands;
pub mod copy_up;
pub mod daemon;
pub mod fuse;
pub mod heap;
pub mod layers;
pub mod mount;
pub mod overlay;
pub mod sys;
pub mod syslog;
pub mod writeback;
