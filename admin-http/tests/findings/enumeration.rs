//! Finding: `POST /api/v1/auth/login` told an unauthenticated caller that an account
//! exists and has TOTP ("this account needs a TOTP code", answered before the password
//! was checked, so also in a fraction of the time). Decision (docs/ADMIN.md): there is no
//! distinct "TOTP required" answer; an unknown account, a wrong password and a right
//! password without a valid code all get the same status, body and headers, after the
//! same work (one argon2 verification).

use super::*;

/// The median time of `answers`.
fn median(answers: &[Answer]) -> Duration {
    let mut t: Vec<Duration> = answers.iter().map(|a| a.took).collect();
    t.sort();
    t[t.len() / 2]
}

#[tokio::test]
async fn a_right_password_without_a_valid_code_answers_as_a_wrong_password() {
    let e = super::super::env(|c| {
        // Many failures on purpose: this test is about the answers, not the lockout.
        c.admin.lockout_failures = 1000;
        c.admin.account_slow_after = 1000;
    })
    .await;
    let (_, secret, recovery) = e.ready("admin", ADMIN_PASSWORD).await;
    let now = super::super::now();
    let code = super::super::totp(&secret, now);
    let wrong_code = format!("{:06}", (code.parse::<u32>().unwrap() + 1) % 1_000_000);
    let cases: [(&str, &str, &str, Value); 9] = [
        ("unknown account", "ghost", ADMIN_PASSWORD, json!({})),
        (
            "unknown account with a code",
            "ghost",
            ADMIN_PASSWORD,
            json!({"totp": code}),
        ),
        ("wrong password", "admin", "not-the-Password-9", json!({})),
        (
            "wrong password, valid recovery code",
            "admin",
            "not-the-Password-9",
            json!({"recovery_code": recovery[0]}),
        ),
        (
            "right password, no code",
            "admin",
            ADMIN_PASSWORD,
            json!({}),
        ),
        (
            "right password, used code",
            "admin",
            ADMIN_PASSWORD,
            json!({"totp": code}),
        ),
        (
            "right password, wrong code",
            "admin",
            ADMIN_PASSWORD,
            json!({"totp": wrong_code}),
        ),
        (
            "right password, malformed code",
            "admin",
            ADMIN_PASSWORD,
            json!({"totp": "12x"}),
        ),
        (
            "right password, wrong recovery code",
            "admin",
            ADMIN_PASSWORD,
            json!({"recovery_code": "aaaaa-bbbbb-ccccc-ddddd"}),
        ),
    ];
    let mut runs: Vec<Vec<Answer>> = cases.iter().map(|_| Vec::new()).collect();
    // Interleaved, so a slow moment of the machine spreads over every case.
    for _ in 0..5 {
        for (i, (_, user, password, extra)) in cases.iter().enumerate() {
            runs[i].push(login_from(&e, "127.0.0.1", user, password, extra.clone()).await);
        }
    }
    let reference = &runs[0][0];
    assert_eq!(reference.status, StatusCode::UNAUTHORIZED, "{reference:?}");
    let wrong_password = median(&runs[2]);
    for ((what, ..), answers) in cases.iter().zip(&runs) {
        for a in answers {
            assert_eq!(a.seen(), reference.seen(), "{what}");
        }
    }
    for ((what, ..), answers) in cases.iter().zip(&runs) {
        // The same work: one argon2 verification each (a check that skips it answers
        // in a fraction of the time).
        let m = median(answers);
        assert!(
            m * 5 >= wrong_password * 2 && m <= wrong_password * 3,
            "{what}: {m:?}, a wrong password {wrong_password:?}"
        );
    }
    // The recovery code sent with a wrong password was not used up: it still logs in.
    let body = json!({"recovery_code": recovery[0]});
    let ok = login_from(&e, "127.0.0.1", "admin", ADMIN_PASSWORD, body).await;
    assert_eq!(ok.status, StatusCode::OK, "{ok:?}");
}
