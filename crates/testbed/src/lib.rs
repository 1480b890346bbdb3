//! placeholder: test fixtures
