//! The users-file loader (JSON or YAML) on arbitrary text: errors, never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mqtt_proxy::auth::Users;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(users) = Users::parse(std::path::Path::new("users.yaml"), text) {
            for (name, u) in &users.users {
                let acl = u.acl(name, "client");
                let _ = acl.may_publish("a/b");
                let _ = acl.may_subscribe("a/#");
            }
        }
    }
});
