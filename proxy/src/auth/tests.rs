//! Authorizer decisions: anonymous opt-in, password checks, CONNACK codes, reloads and the
//! per-address failure limit.

use std::net::IpAddr;

use super::users::hash_password;
use super::*;

fn users(list: &[(&str, &str, Option<&[&str]>)]) -> Users {
    let mut u = Users::default();
    for (name, pw, publish) in list {
        u.users.insert(
            name.to_string(),
            User {
                password: hash_password(pw).expect("hash"),
                publish: publish.map(|p| p.iter().map(|s| s.to_string()).collect()),
                subscribe: None,
            },
        );
    }
    u
}

fn auth(allow_anonymous: bool, per_minute: u32) -> Authorizer {
    Authorizer::new(&AuthOptions {
        users_file: None,
        allow_anonymous,
        failures_per_minute: per_minute,
    })
    .expect("authorizer")
}

fn creds<'a>(user: Option<&'a str>, pw: Option<&'a str>, peer: [u8; 4]) -> Credentials<'a> {
    Credentials {
        username: user,
        password: pw,
        client_id: "dev-1",
        cert_identity: None,
        peer: IpAddr::from(peer),
    }
}

#[tokio::test]
async fn default_refuses_everyone_and_anonymous_is_opt_in() {
    let closed = auth(false, 0);
    assert_eq!(
        closed
            .authenticate(creds(None, None, [1, 1, 1, 1]))
            .await
            .err(),
        Some(Denied::NoCredentials)
    );
    assert_eq!(
        closed
            .authenticate(creds(Some("x"), Some("y"), [1, 1, 1, 1]))
            .await
            .err(),
        Some(Denied::UnknownUser)
    );
    let open = auth(true, 0);
    let g = open
        .authenticate(creds(None, None, [1, 1, 1, 1]))
        .await
        .expect("anonymous");
    assert_eq!(g.username, None);
    // Without users there is nothing to check credentials against (as mosquitto).
    assert!(open
        .authenticate(creds(Some("x"), Some("y"), [1, 1, 1, 1]))
        .await
        .is_ok());
    // With users, anonymous stays open but a wrong login is still refused.
    open.set_users(users(&[("alice", "pw-a", None)]));
    assert!(open
        .authenticate(creds(None, None, [1, 1, 1, 1]))
        .await
        .is_ok());
    assert_eq!(
        open.authenticate(creds(Some("alice"), Some("x"), [1, 1, 1, 1]))
            .await
            .err(),
        Some(Denied::BadPassword)
    );
}

#[tokio::test]
async fn passwords_acls_and_reload() {
    let a = auth(false, 0);
    a.set_users(users(&[("alice", "pw-a", Some(&["devices/%u/#"]))]));
    let peer = [2, 2, 2, 2];
    assert_eq!(
        a.authenticate(creds(Some("alice"), Some("nope"), peer))
            .await
            .err(),
        Some(Denied::BadPassword)
    );
    assert_eq!(
        a.authenticate(creds(Some("alice"), None, peer)).await.err(),
        Some(Denied::BadPassword)
    );
    let mut g = a
        .authenticate(creds(Some("alice"), Some("pw-a"), peer))
        .await
        .expect("alice");
    assert!(a.may_publish(&mut g, "devices/alice/t"));
    assert!(!a.may_publish(&mut g, "devices/bob/t"));
    // A reload that widens the ACL applies to the open grant; removing the user revokes it.
    a.set_users(users(&[("alice", "pw-a", None)]));
    assert!(a.may_publish(&mut g, "devices/bob/t"));
    a.set_users(Users::default());
    assert!(!a.may_publish(&mut g, "devices/alice/t"));
    assert!(!a.may_subscribe(&mut g, "devices/alice/#"));
}

#[tokio::test]
async fn failures_are_rate_limited_per_address() {
    let a = auth(false, 2);
    a.set_users(users(&[("alice", "pw-a", None)]));
    let bad = [3, 3, 3, 3];
    for _ in 0..2 {
        assert_eq!(
            a.authenticate(creds(Some("alice"), Some("x"), bad))
                .await
                .err(),
            Some(Denied::BadPassword)
        );
    }
    // Even the right password is refused from that address for the rest of the window.
    assert_eq!(
        a.authenticate(creds(Some("alice"), Some("pw-a"), bad))
            .await
            .err(),
        Some(Denied::RateLimited)
    );
    assert!(a
        .authenticate(creds(Some("alice"), Some("pw-a"), [4, 4, 4, 4]))
        .await
        .is_ok());
}

#[test]
fn connack_codes() {
    use crate::codec::Protocol::{V4, V5};
    let table = [
        (Denied::NoCredentials, 0x05, 0x87),
        (Denied::UnknownUser, 0x04, 0x86),
        (Denied::BadPassword, 0x04, 0x86),
        (Denied::RateLimited, 0x05, 0x9F),
    ];
    for (d, v4, v5) in table {
        assert_eq!(d.connack_code(V4), v4, "{d:?} 3.1.1");
        assert_eq!(d.connack_code(V5), v5, "{d:?} 5");
    }
}
