//! The embedded demo: a fraud model's feature service over local tables, needing no database
//! or network. [`write`] lays out the configuration and deterministic tables in a directory;
//! the gateway then serves that directory like any other deployment.

use std::{fmt::Write as _, path::Path, time::SystemTime};

/// The demo's configuration file.
pub const CONFIG: &str = include_str!("../demo/demo.toml");
/// Customers in the demo tables (`u_00000` ..).
pub const USERS: usize = 10_000;
/// Cards (`c_00000` ..).
pub const CARDS: usize = 10_000;
/// Merchants (`m_0000` ..).
pub const MERCHANTS: usize = 2_000;
/// Card payments of the last day seeding the `payments` stream (`payments.jsonl`).
pub const PAYMENTS: usize = 20_000;

/// Merchant category codes with their fraud rate and tier. 7995 (gambling) is left out of the
/// table on purpose, so its merchants show the default values.
const MCCS: &[(i64, f64, &str)] = &[
    (5411, 0.002, "low"),
    (5812, 0.004, "low"),
    (5541, 0.006, "low"),
    (5999, 0.012, "medium"),
    (4829, 0.041, "high"),
    (5732, 0.018, "medium"),
    (5944, 0.027, "high"),
    (4511, 0.009, "medium"),
    (5311, 0.005, "low"),
];
const MERCHANT_MCCS: &[i64] = &[5411, 5812, 5541, 5999, 4829, 5732, 5944, 4511, 5311, 7995];
const COUNTRIES: &[&str] = &["US", "GB", "DE", "FR", "BR", "IN", "NG", "CA"];

/// SplitMix64: a tiny deterministic generator, so the demo's data is the same on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// Writes `demo.toml` and its tables into `dir`. Event times are relative to `now`: one
/// customer in fifty has a profile older than the view's 30-day max age.
pub fn write(dir: &Path, now: SystemTime) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("demo.toml"), CONFIG)?;
    let now_secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut rng = Rng(42);

    let mut users = String::from(
        "user_id,account_age_days,country,kyc_level,email_verified,avg_txn_amount_30d,txn_count_7d,chargebacks_365d,updated_at\n",
    );
    for i in 0..USERS {
        let age_days = rng.below(3650);
        let txn_7d = if age_days < 7 { 0 } else { rng.below(40) };
        // New customers have no spending history: a null, not a zero.
        let avg = if txn_7d == 0 {
            String::new()
        } else {
            format!("{:.2}", 5.0 + rng.unit() * rng.unit() * 400.0)
        };
        let stale = i % 50 == 13;
        let age_secs = if stale {
            40 * 86_400 + rng.below(86_400)
        } else {
            rng.below(86_400)
        };
        let _ = writeln!(
            users,
            "u_{i:05},{age_days},{},{},{},{avg},{txn_7d},{},{}",
            rng.pick(COUNTRIES),
            rng.below(3),
            rng.below(10) < 8,
            if rng.below(20) == 0 { rng.below(4) } else { 0 },
            now_secs.saturating_sub(age_secs)
        );
    }
    std::fs::write(dir.join("users.csv"), users)?;

    let mut cards =
        String::from("card_id,card_age_days,card_type,issuer_country,decline_rate_30d\n");
    for i in 0..CARDS {
        let _ = writeln!(
            cards,
            "c_{i:05},{},{},{},{:.4}",
            rng.below(2000),
            rng.pick(&["credit", "debit", "prepaid"]),
            rng.pick(COUNTRIES),
            rng.unit() * rng.unit() * 0.3
        );
    }
    std::fs::write(dir.join("cards.csv"), cards)?;

    let mut merchants = String::from("merchant_id,mcc,country,risk_score,chargeback_rate_90d\n");
    for i in 0..MERCHANTS {
        let _ = writeln!(
            merchants,
            "m_{i:04},{},{},{:.3},{:.4}",
            rng.pick(MERCHANT_MCCS),
            rng.pick(COUNTRIES),
            rng.unit(),
            rng.unit() * rng.unit() * 0.05
        );
    }
    std::fs::write(dir.join("merchants.csv"), merchants)?;

    let mut mcc = String::from("mcc,fraud_rate,risk_tier\n");
    for (code, rate, tier) in MCCS {
        let _ = writeln!(mcc, "{code},{rate},{tier}");
    }
    std::fs::write(dir.join("mcc_risk.csv"), mcc)?;

    // The last day's card payments, the seed of the `payments` stream source's tiles: a few
    // cards busy, most quiet.
    let now_ms = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut payments = String::new();
    for _ in 0..PAYMENTS {
        let card = if rng.below(4) == 0 {
            rng.below(20)
        } else {
            rng.below(CARDS as u64)
        };
        let _ = writeln!(
            payments,
            r#"{{"card_id":"c_{card:05}","merchant_id":"m_{:04}","amount":{:.2},"ts":{}}}"#,
            rng.below(MERCHANTS as u64),
            1.0 + rng.unit() * rng.unit() * 500.0,
            now_ms.saturating_sub(rng.below(86_400_000)),
        );
    }
    std::fs::write(dir.join("payments.jsonl"), payments)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_config_validates_and_tables_load() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), SystemTime::now()).unwrap();
        let registry = fetcher_builtin::registry();
        let config = gateway_config::load(&dir.path().join("demo.toml"), &registry).unwrap();
        assert_eq!(config.feature_services["fraud_v1"].features.len(), 20);
        let users = std::fs::read_to_string(dir.path().join("users.csv")).unwrap();
        assert_eq!(users.lines().count(), USERS + 1);
    }

    #[test]
    fn demo_data_is_deterministic() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let now = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
        write(a.path(), now).unwrap();
        write(b.path(), now).unwrap();
        for file in [
            "users.csv",
            "cards.csv",
            "merchants.csv",
            "mcc_risk.csv",
            "payments.jsonl",
        ] {
            assert_eq!(
                std::fs::read(a.path().join(file)).unwrap(),
                std::fs::read(b.path().join(file)).unwrap()
            );
        }
    }
}
