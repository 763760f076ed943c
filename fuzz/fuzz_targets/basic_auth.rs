//! Any bytes as a request's `Basic` credentials: checking them against users must not panic,
//! and only a value of the `Basic ` scheme that decodes to a known user's name and password is
//! let through.
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use skiff::config::model::{BasicAuthDenial, BasicAuthUsers};

fuzz_target!(|data: &[u8]| {
    // user1:pass1
    let users = BasicAuthUsers(HashMap::from([(
        "user1".to_string(),
        "8FePHnF0saQcTqjG4X96ijuIySo=".to_string(),
    )]));
    match users.authenticate(Some(data)) {
        Ok(user) => {
            assert_eq!(user, "user1");
            assert!(data.starts_with(b"Basic "));
        }
        Err(BasicAuthDenial::Missing) => unreachable!("a value was given"),
        Err(BasicAuthDenial::Scheme) => assert!(!data.starts_with(b"Basic ")),
        Err(_) => {}
    }
});
