//! The leader-election decision over a Lease as read (pure).

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use mqtt_proxy_operator::leader::{decide, Step};

fn lease(holder: Option<&str>, renewed_secs_ago: i64, now: Timestamp) -> Lease {
    Lease {
        spec: Some(LeaseSpec {
            holder_identity: holder.map(String::from),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(now - SignedDuration::from_secs(renewed_secs_ago))),
            ..LeaseSpec::default()
        }),
        ..Lease::default()
    }
}

#[test]
fn lease_decisions() {
    let now = Timestamp::now();
    assert_eq!(decide(None, "me", now), Step::Create);
    assert_eq!(
        decide(Some(&lease(Some("me"), 3, now)), "me", now),
        Step::Renew
    );
    assert_eq!(
        decide(Some(&lease(Some("other"), 3, now)), "me", now),
        Step::Wait {
            holder: "other".into()
        }
    );
    assert_eq!(
        decide(Some(&lease(Some("other"), 16, now)), "me", now),
        Step::TakeOver,
        "expired"
    );
    assert_eq!(
        decide(Some(&lease(None, 1, now)), "me", now),
        Step::TakeOver,
        "released"
    );
    assert_eq!(
        decide(Some(&Lease::default()), "me", now),
        Step::TakeOver,
        "no spec"
    );
}
