//! Seeded, deterministic Plaid data for users `0..population`: one Item per user, 1-4 accounts,
//! about 90 days of transactions, and the owner's identity.
//!
//! # Contract
//! Everything is a pure function of `(seed, user_index)`, so a test (or a generator of the
//! PostgreSQL table of linked items) computes the same access tokens, item ids and expected
//! answers the server serves, in any process. Dates are relative to [`now`], a fixed instant
//! derived from the seed, never to the wall clock, so answers are reproducible.
//!
//! Access tokens (`access-sandbox-<uuid v4>`) and item ids (37 alphanumerics, as Plaid's) carry
//! the user index masked with a seed-derived key; [`user_for_access_token`] decodes it and then
//! recomputes the whole token, so only the exact token of an existing user resolves and no table
//! of tokens is held in memory (populations can be in the millions for load tests).

use serde_json::{Value, json};

use crate::seeded::{SplitMix64, rfc3339, round};

const DAY: i64 = 86_400;
/// 2025-01-01T00:00:00Z.
const EPOCH_2025: i64 = 1_735_689_600;
/// How far back the transaction history goes.
pub const HISTORY_DAYS: i64 = 90;
const ALPHANUM: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
/// The user index travels in 48 bits of tokens and ids.
const INDEX_BITS: u64 = 0xFFFF_FFFF_FFFF;
/// Characters of an item id holding the masked index (62^9 > 2^48).
const INDEX_CHARS: usize = 9;

/// The fixed "now" of the fake's data, as Unix seconds: noon of a seed-dependent day in 2025.
/// Balances are as of this instant and transactions lie in the [`HISTORY_DAYS`] before it.
pub fn now(seed: u64) -> i64 {
    let day = SplitMix64::for_entity(seed, "plaid_now", 0).below(300) as i64;
    EPOCH_2025 + day * DAY + 12 * 3600
}

fn index_mask(seed: u64) -> u64 {
    SplitMix64::for_entity(seed, "plaid_index_mask", 0).next_u64() & INDEX_BITS
}

fn alphanum(g: &mut SplitMix64, n: usize) -> String {
    (0..n)
        .map(|_| char::from(ALPHANUM[g.below(ALPHANUM.len() as u64) as usize]))
        .collect()
}

/// The access token of user `user_index`: `access-sandbox-` and a version-4 UUID.
pub fn access_token(seed: u64, user_index: u64) -> String {
    let mut g = SplitMix64::for_entity(seed, "plaid_access_token", user_index);
    let hi = (g.next_u64() & !0xF000) | 0x4000;
    let masked = (user_index ^ index_mask(seed)) & INDEX_BITS;
    let lo = ((g.next_u64() << 48) & 0x3FFF_0000_0000_0000) | 0x8000_0000_0000_0000 | masked;
    format!(
        "access-sandbox-{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        hi >> 32,
        (hi >> 16) & 0xFFFF,
        hi & 0xFFFF,
        lo >> 48,
        lo & INDEX_BITS
    )
}

/// The user whose access token is exactly `token`, if it is below `population`.
pub fn user_for_access_token(seed: u64, population: u64, token: &str) -> Option<u64> {
    let uuid = token.strip_prefix("access-sandbox-")?;
    let last = uuid.rsplit('-').next()?;
    if last.len() != 12 {
        return None;
    }
    let masked = u64::from_str_radix(last, 16).ok()?;
    let user = (masked ^ index_mask(seed)) & INDEX_BITS;
    (user < population && access_token(seed, user) == token).then_some(user)
}

/// The item id of user `user_index`: 37 alphanumerics, as Plaid's.
pub fn item_id(seed: u64, user_index: u64) -> String {
    let mut g = SplitMix64::for_entity(seed, "plaid_item_id", user_index);
    let mut id = alphanum(&mut g, 37 - INDEX_CHARS);
    let mut masked = (user_index ^ index_mask(seed)) & INDEX_BITS;
    let mut tail = [b'0'; INDEX_CHARS];
    for slot in tail.iter_mut().rev() {
        *slot = ALPHANUM[(masked % 62) as usize];
        masked /= 62;
    }
    id.extend(tail.iter().map(|b| char::from(*b)));
    id
}

/// The user whose item id is exactly `item`, if it is below `population`.
pub fn user_for_item_id(seed: u64, population: u64, item: &str) -> Option<u64> {
    if item.len() != 37 || !item.is_ascii() {
        return None;
    }
    let mut masked: u64 = 0;
    for b in item[37 - INDEX_CHARS..].bytes() {
        let digit = ALPHANUM.iter().position(|a| *a == b)? as u64;
        masked = masked.checked_mul(62)?.checked_add(digit)?;
    }
    let user = (masked ^ index_mask(seed)) & INDEX_BITS;
    (user < population && item_id(seed, user) == item).then_some(user)
}

/// What kind of account.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccountKind {
    Checking,
    Savings,
    CreditCard,
}

impl AccountKind {
    /// Plaid's `type`.
    pub fn plaid_type(self) -> &'static str {
        match self {
            AccountKind::Checking | AccountKind::Savings => "depository",
            AccountKind::CreditCard => "credit",
        }
    }

    /// Plaid's `subtype`.
    pub fn subtype(self) -> &'static str {
        match self {
            AccountKind::Checking => "checking",
            AccountKind::Savings => "savings",
            AccountKind::CreditCard => "credit card",
        }
    }
}

/// One account of an Item, with its balances as of [`now`].
#[derive(Clone, Debug, PartialEq)]
pub struct Account {
    pub account_id: String,
    pub kind: AccountKind,
    pub mask: String,
    /// For a credit card, the amount owed; null for some accounts (then `available` is set).
    pub current: Option<f64>,
    /// Null for some accounts, as some institutions do not report it.
    pub available: Option<f64>,
    /// The credit limit of a credit card; null for depository accounts.
    pub limit: Option<f64>,
}

impl Account {
    /// The account as `/accounts/get` serves it.
    pub fn to_json(&self) -> Value {
        let (name, official) = match self.kind {
            AccountKind::Checking => ("Plaid Checking", "Plaid Gold Standard 0% Interest Checking"),
            AccountKind::Savings => ("Plaid Saving", "Plaid Silver Standard 0.1% Interest Saving"),
            AccountKind::CreditCard => (
                "Plaid Credit Card",
                "Plaid Diamond 12.5% APR Interest Credit Card",
            ),
        };
        json!({
            "account_id": self.account_id,
            "balances": {
                "available": self.available,
                "current": self.current,
                "limit": self.limit,
                "iso_currency_code": "USD",
                "unofficial_currency_code": null,
            },
            "mask": self.mask,
            "name": name,
            "official_name": official,
            "type": self.kind.plaid_type(),
            "subtype": self.kind.subtype(),
        })
    }
}

/// The accounts of user `user_index`'s Item: a checking account first, then up to three more.
pub fn accounts(seed: u64, user_index: u64) -> Vec<Account> {
    let mut g = SplitMix64::for_entity(seed, "plaid_accounts", user_index);
    let count = 1 + g.below(4);
    (0..count)
        .map(|k| {
            let kind = if k == 0 {
                AccountKind::Checking
            } else {
                match g.below(100) {
                    0..40 => AccountKind::Savings,
                    40..85 => AccountKind::CreditCard,
                    _ => AccountKind::Checking,
                }
            };
            let account_id = alphanum(&mut g, 37);
            let mask = format!("{:04}", g.below(10_000));
            // A lognormal-ish spread of balances: most are modest, a few are large.
            let scale = (4.0 + 4.0 * g.next_f64()).exp();
            let nulls = g.below(100);
            let (current, available, limit) = match kind {
                AccountKind::Checking | AccountKind::Savings => {
                    let current = round(scale, 2);
                    // Pending debits make available a little lower than current.
                    let available = round(current - scale * 0.1 * g.next_f64(), 2);
                    match nulls {
                        0..5 => (None, Some(available), None),
                        5..15 => (Some(current), None, None),
                        _ => (Some(current), Some(available), None),
                    }
                }
                AccountKind::CreditCard => {
                    let limit = round((500.0 + 19_500.0 * g.next_f64()).floor(), 2);
                    let owed = round(limit * g.next_f64().powi(2), 2);
                    let available = round(limit - owed, 2);
                    match nulls {
                        0..10 => (Some(owed), None, Some(limit)),
                        10..15 => (Some(owed), Some(available), None),
                        _ => (Some(owed), Some(available), Some(limit)),
                    }
                }
            };
            Account {
                account_id,
                kind,
                mask,
                current,
                available,
                limit,
            }
        })
        .collect()
}

/// One merchant or counterparty of the generated history.
struct Payee {
    name: &'static str,
    merchant: Option<&'static str>,
    primary: &'static str,
    detailed: &'static str,
    channel: &'static str,
    /// Amount range in dollars; negative amounts are money coming in.
    min: f64,
    max: f64,
}

const fn payee(
    name: &'static str,
    merchant: Option<&'static str>,
    detailed: (&'static str, &'static str),
    channel: &'static str,
    min: f64,
    max: f64,
) -> Payee {
    Payee {
        name,
        merchant,
        primary: detailed.0,
        detailed: detailed.1,
        channel,
        min,
        max,
    }
}

/// Everyday spending, on checking accounts and credit cards.
const SPENDING: &[Payee] = &[
    payee(
        "Starbucks",
        Some("Starbucks"),
        ("FOOD_AND_DRINK", "FOOD_AND_DRINK_COFFEE"),
        "in store",
        3.0,
        12.0,
    ),
    payee(
        "McDonald's",
        Some("McDonald's"),
        ("FOOD_AND_DRINK", "FOOD_AND_DRINK_FAST_FOOD"),
        "in store",
        5.0,
        25.0,
    ),
    payee(
        "Uber 063015 SF**POOL**",
        Some("Uber"),
        ("TRANSPORTATION", "TRANSPORTATION_TAXIS_AND_RIDE_SHARES"),
        "online",
        8.0,
        60.0,
    ),
    payee(
        "AMAZON MKTPLACE PMTS",
        Some("Amazon"),
        (
            "GENERAL_MERCHANDISE",
            "GENERAL_MERCHANDISE_ONLINE_MARKETPLACES",
        ),
        "online",
        10.0,
        300.0,
    ),
    payee(
        "WAL-MART #1234",
        Some("Walmart"),
        ("GENERAL_MERCHANDISE", "GENERAL_MERCHANDISE_SUPERSTORES"),
        "in store",
        20.0,
        200.0,
    ),
    payee(
        "WHOLEFDS MKT 10234",
        Some("Whole Foods"),
        ("FOOD_AND_DRINK", "FOOD_AND_DRINK_GROCERIES"),
        "in store",
        20.0,
        220.0,
    ),
    payee(
        "SHELL OIL 57442",
        Some("Shell"),
        ("TRANSPORTATION", "TRANSPORTATION_GAS"),
        "in store",
        25.0,
        80.0,
    ),
    payee(
        "Netflix.com",
        Some("Netflix"),
        ("ENTERTAINMENT", "ENTERTAINMENT_TV_AND_MOVIES"),
        "online",
        15.49,
        15.49,
    ),
    payee(
        "COMCAST CABLE COMM",
        Some("Comcast"),
        (
            "RENT_AND_UTILITIES",
            "RENT_AND_UTILITIES_INTERNET_AND_CABLE",
        ),
        "online",
        60.0,
        140.0,
    ),
    payee(
        "SQ *CORNER DELI",
        None,
        ("FOOD_AND_DRINK", "FOOD_AND_DRINK_RESTAURANT"),
        "in store",
        8.0,
        40.0,
    ),
    payee(
        "VENMO PAYMENT",
        Some("Venmo"),
        ("TRANSFER_OUT", "TRANSFER_OUT_ACCOUNT_TRANSFER"),
        "online",
        10.0,
        250.0,
    ),
];
const PAYROLL: Payee = payee(
    "ACME CORP PAYROLL DIR DEP",
    None,
    ("INCOME", "INCOME_WAGES"),
    "other",
    -4000.0,
    -900.0,
);
const OVERDRAFT: Payee = payee(
    "OVERDRAFT ITEM FEE",
    None,
    ("BANK_FEES", "BANK_FEES_OVERDRAFT_FEES"),
    "other",
    35.0,
    35.0,
);
const ATM_FEE: Payee = payee(
    "ATM WITHDRAWAL FEE",
    None,
    ("BANK_FEES", "BANK_FEES_ATM_FEES"),
    "other",
    2.5,
    3.5,
);
const CARD_PAYMENT: Payee = payee(
    "AUTOMATIC PAYMENT - THANK YOU",
    None,
    ("LOAN_PAYMENTS", "LOAN_PAYMENTS_CREDIT_CARD_PAYMENT"),
    "other",
    -1500.0,
    -50.0,
);
const INTEREST: Payee = payee(
    "INTRST PYMNT",
    None,
    ("INCOME", "INCOME_INTEREST_EARNED"),
    "other",
    -9.0,
    -0.05,
);
const SAVINGS_IN: Payee = payee(
    "ONLINE TRANSFER FROM CHK",
    None,
    ("TRANSFER_IN", "TRANSFER_IN_SAVINGS"),
    "other",
    -500.0,
    -25.0,
);

/// One transaction, as of [`now`].
#[derive(Clone, Debug, PartialEq)]
pub struct Transaction {
    pub transaction_id: String,
    pub account_id: String,
    /// Positive is money leaving the account, as in Plaid.
    pub amount: f64,
    /// The posting (or, when pending, the expected) day, as days since 1970-01-01.
    pub day: i64,
    /// When the transaction happened, as Unix seconds.
    pub at: i64,
    pub pending: bool,
    pub name: &'static str,
    pub merchant_name: Option<&'static str>,
    pub payment_channel: &'static str,
    pub primary: &'static str,
    pub detailed: &'static str,
    pub confidence_level: &'static str,
}

impl Transaction {
    /// The transaction as `/transactions/sync` serves it, with every required-but-nullable
    /// field present.
    pub fn to_json(&self) -> Value {
        let date = |unix: i64| rfc3339(unix)[..10].to_owned();
        let authorized_day = self.at.div_euclid(DAY);
        json!({
            "transaction_id": self.transaction_id,
            "account_id": self.account_id,
            "amount": self.amount,
            "iso_currency_code": "USD",
            "unofficial_currency_code": null,
            "date": date(self.day * DAY),
            "authorized_date": date(authorized_day * DAY),
            "datetime": rfc3339(self.at),
            "authorized_datetime": rfc3339(self.at),
            "name": self.name,
            "merchant_name": self.merchant_name,
            "merchant_entity_id": null,
            "logo_url": null,
            "website": null,
            "pending": self.pending,
            "pending_transaction_id": null,
            "account_owner": null,
            "payment_channel": self.payment_channel,
            "personal_finance_category": {
                "primary": self.primary,
                "detailed": self.detailed,
                "confidence_level": self.confidence_level,
            },
            "category": null,
            "category_id": null,
            "check_number": null,
            "transaction_code": null,
            "transaction_type": if self.payment_channel == "online" { "digital" } else { "place" },
            "location": {
                "address": null, "city": null, "region": null, "postal_code": null,
                "country": null, "lat": null, "lon": null, "store_number": null,
            },
            "payment_meta": {
                "by_order_of": null, "payee": null, "payer": null, "payment_method": null,
                "payment_processor": null, "ppd_id": null, "reason": null, "reference_number": null,
            },
            "counterparties": [],
        })
    }
}

/// The transaction history of user `user_index`'s Item over the [`HISTORY_DAYS`] before
/// [`now`], oldest first: the order `/transactions/sync` pages through.
pub fn transactions(seed: u64, user_index: u64) -> Vec<Transaction> {
    let today = now(seed).div_euclid(DAY);
    let mut out = Vec::new();
    for (k, account) in accounts(seed, user_index).iter().enumerate() {
        let mut g = SplitMix64::for_entity(seed, "plaid_transactions", user_index * 8 + k as u64);
        let overdrafter = g.next_f64() < 0.15;
        let pay_phase = g.below(14) as i64;
        let bill_day = g.below(28) as i64;
        for days_ago in (0..HISTORY_DAYS).rev() {
            let day = today - days_ago;
            let mut todays: Vec<&Payee> = Vec::new();
            match account.kind {
                AccountKind::Checking => {
                    while todays.len() < 4 && g.next_f64() < 0.45 {
                        todays.push(&SPENDING[g.below(SPENDING.len() as u64) as usize]);
                    }
                    if (day + pay_phase) % 14 == 0 {
                        todays.push(&PAYROLL);
                    }
                    if overdrafter && g.next_f64() < 0.04 {
                        todays.push(&OVERDRAFT);
                    }
                    if g.next_f64() < 0.02 {
                        todays.push(&ATM_FEE);
                    }
                }
                AccountKind::CreditCard => {
                    while todays.len() < 3 && g.next_f64() < 0.4 {
                        todays.push(&SPENDING[g.below(SPENDING.len() as u64) as usize]);
                    }
                    if day % 30 == bill_day {
                        todays.push(&CARD_PAYMENT);
                    }
                }
                AccountKind::Savings => {
                    if day % 30 == bill_day {
                        todays.push(&INTEREST);
                    }
                    if g.next_f64() < 0.05 {
                        todays.push(&SAVINGS_IN);
                    }
                }
            }
            for payee in todays {
                let amount = round(payee.min + (payee.max - payee.min) * g.next_f64(), 2);
                let at = day * DAY + 7 * 3600 + g.below(15 * 3600) as i64;
                // Only the last two days hold pending transactions, as at a real bank.
                let pending = days_ago < 2 && g.next_f64() < 0.6;
                // Posted card transactions settle a day or so after they were authorized.
                let at = if pending || payee.channel == "other" {
                    at
                } else {
                    at - DAY * g.below(2) as i64
                };
                let confidence_level = match g.below(10) {
                    0..6 => "VERY_HIGH",
                    6..9 => "HIGH",
                    _ => "MEDIUM",
                };
                out.push(Transaction {
                    transaction_id: alphanum(&mut g, 37),
                    account_id: account.account_id.clone(),
                    amount,
                    day,
                    at,
                    pending,
                    name: payee.name,
                    merchant_name: payee.merchant,
                    payment_channel: payee.channel,
                    primary: payee.primary,
                    detailed: payee.detailed,
                    confidence_level,
                });
            }
        }
    }
    // Stable: same-day transactions keep their per-account generation order.
    out.sort_by_key(|t| t.day);
    out
}

/// A postal address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Address {
    pub street: String,
    pub city: String,
    pub region: String,
    pub postal_code: String,
    pub country: String,
}

/// The owner of every account of an Item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub legal_name: String,
    pub email_address: String,
    /// E.164, e.g. `+14155550123`.
    pub phone_number: String,
    pub address: Address,
}

impl Identity {
    /// The owner as `/identity/get` serves it under each account's `owners`.
    pub fn to_json(&self) -> Value {
        json!({
            "names": [self.legal_name],
            "emails": [{"data": self.email_address, "primary": true, "type": "primary"}],
            "phone_numbers": [{"data": self.phone_number, "primary": true, "type": "mobile"}],
            "addresses": [{
                "data": {
                    "street": self.address.street,
                    "city": self.address.city,
                    "region": self.address.region,
                    "postal_code": self.address.postal_code,
                    "country": self.address.country,
                },
                "primary": true,
            }],
        })
    }
}

const FIRST_NAMES: &[&str] = &[
    "Alberta", "Bruno", "Carmen", "Dmitri", "Elena", "Farid", "Grace", "Hiro", "Ines", "Jamal",
    "Kateryna", "Liam", "Mei", "Nadia", "Oscar", "Priya",
];
const LAST_NAMES: &[&str] = &[
    "Charleston",
    "Okafor",
    "Lindqvist",
    "Moreau",
    "Nakamura",
    "Petrov",
    "Quispe",
    "Rahman",
    "Silva",
    "Thompson",
    "Uchenna",
    "Varga",
];
const CITIES: &[(&str, &str, &str)] = &[
    ("San Francisco", "CA", "941"),
    ("Austin", "TX", "787"),
    ("Brooklyn", "NY", "112"),
    ("Chicago", "IL", "606"),
    ("Seattle", "WA", "981"),
    ("Denver", "CO", "802"),
];
const STREETS: &[&str] = &[
    "Market St",
    "Elm Street",
    "Oak Avenue",
    "Pine Road",
    "Maple Drive",
];

/// The owner of user `user_index`'s accounts.
pub fn identity(seed: u64, user_index: u64) -> Identity {
    let mut g = SplitMix64::for_entity(seed, "plaid_identity", user_index);
    let first = FIRST_NAMES[g.below(FIRST_NAMES.len() as u64) as usize];
    let last = LAST_NAMES[g.below(LAST_NAMES.len() as u64) as usize];
    let (city, region, zip3) = CITIES[g.below(CITIES.len() as u64) as usize];
    let street = STREETS[g.below(STREETS.len() as u64) as usize];
    Identity {
        legal_name: format!("{first} {last}"),
        email_address: format!(
            "{}.{}{}@example.com",
            first.to_ascii_lowercase(),
            last.to_ascii_lowercase(),
            user_index
        ),
        phone_number: format!("+1{}555{:04}", 200 + g.below(800), g.below(10_000)),
        address: Address {
            street: format!("{} {street}", 1 + g.below(9999)),
            city: city.to_owned(),
            region: region.to_owned(),
            postal_code: format!("{zip3}{:02}", g.below(100)),
            country: "US".to_owned(),
        },
    }
}

/// The institution, creation time and consent expiry of user `user_index`'s Item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ItemInfo {
    pub item_id: String,
    pub institution_id: &'static str,
    /// Unix seconds, before [`now`].
    pub created_at: i64,
    /// Unix seconds; null for most institutions (only some have consent expiry).
    pub consent_expiration_time: Option<i64>,
    /// The last successful transactions update, Unix seconds, a few hours before [`now`].
    pub last_successful_update: i64,
}

const INSTITUTIONS: &[&str] = &["ins_3", "ins_4", "ins_5", "ins_13", "ins_56", "ins_109508"];

/// The Item of user `user_index`.
pub fn item(seed: u64, user_index: u64) -> ItemInfo {
    let mut g = SplitMix64::for_entity(seed, "plaid_item", user_index);
    let now = now(seed);
    ItemInfo {
        item_id: item_id(seed, user_index),
        institution_id: INSTITUTIONS[g.below(INSTITUTIONS.len() as u64) as usize],
        created_at: now - (30 + g.below(1000) as i64) * DAY - g.below(DAY as u64) as i64,
        consent_expiration_time: (g.next_f64() < 0.2)
            .then(|| now + (30 + g.below(330) as i64) * DAY),
        last_successful_update: now - g.below(12 * 3600) as i64,
    }
}

/// The ACH numbers of a depository account: `(account, routing, wire_routing)`.
pub fn ach_numbers(seed: u64, account: &Account) -> (String, String, String) {
    let mut g = SplitMix64::for_entity(seed, "plaid_ach", 0);
    for b in account.account_id.bytes() {
        g = SplitMix64::for_entity(g.next_u64(), "plaid_ach", u64::from(b));
    }
    let number = format!(
        "{:04}{:06}{}",
        g.below(10_000),
        g.below(1_000_000),
        account.mask
    );
    let routing = format!("{:09}", 11_000_000 + g.below(90_000_000));
    (number, routing.clone(), routing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_and_item_ids_round_trip_and_reject_forgeries() {
        for user in [0, 1, 41, 9_999, 1 << 40] {
            let token = access_token(7, user);
            assert_eq!(user_for_access_token(7, u64::MAX, &token), Some(user));
            let item = item_id(7, user);
            assert_eq!(item.len(), 37);
            assert_eq!(user_for_item_id(7, u64::MAX, &item), Some(user));
        }
        let token = access_token(7, 12);
        let uuid = token.strip_prefix("access-sandbox-").expect("prefix");
        let groups: Vec<&str> = uuid.split('-').collect();
        assert_eq!(
            groups.iter().map(|g| g.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(groups[2].starts_with('4'), "version 4: {uuid}");
        assert!("89ab".contains(&groups[3][..1]), "RFC 4122 variant: {uuid}");
        assert_eq!(
            user_for_access_token(7, 12, &token),
            None,
            "beyond population"
        );
        assert_eq!(user_for_access_token(8, 100, &token), None, "other seed");
        let mut forged = token.clone();
        forged.replace_range(15..16, if &token[15..16] == "0" { "1" } else { "0" });
        assert_eq!(user_for_access_token(7, 100, &forged), None);
        assert_eq!(user_for_access_token(7, 100, "access-production-x"), None);
        assert_eq!(user_for_item_id(7, 100, "short"), None);
    }

    #[test]
    fn accounts_follow_the_nullability_rules() {
        let mut kinds = [0; 3];
        for user in 0..500 {
            let accounts = accounts(3, user);
            assert!((1..=4).contains(&accounts.len()));
            assert_eq!(accounts[0].kind, AccountKind::Checking);
            for a in &accounts {
                assert!(a.current.is_some() || a.available.is_some(), "{a:?}");
                if a.kind != AccountKind::CreditCard {
                    assert_eq!(a.limit, None);
                }
                kinds[a.kind as usize] += 1;
            }
        }
        assert!(
            kinds.iter().all(|k| *k > 50),
            "every kind appears: {kinds:?}"
        );
    }

    #[test]
    fn transactions_cover_ninety_days_before_now_in_order() {
        let today = now(5).div_euclid(DAY);
        let txns = transactions(5, 17);
        assert!(txns.len() > 20, "{}", txns.len());
        assert!(txns.windows(2).all(|w| w[0].day <= w[1].day));
        assert!(
            txns.iter()
                .all(|t| (today - HISTORY_DAYS..=today).contains(&t.day))
        );
        assert!(
            txns.iter()
                .filter(|t| t.pending)
                .all(|t| t.day >= today - 1)
        );
        assert!(txns.iter().any(|t| t.amount < 0.0), "income appears");
        let ids: std::collections::HashSet<_> = txns.iter().map(|t| &t.transaction_id).collect();
        assert_eq!(ids.len(), txns.len(), "unique ids");
        assert_eq!(txns, transactions(5, 17), "deterministic");
        let json = txns[0].to_json();
        assert_eq!(json["date"].as_str().map(str::len), Some(10));
        assert!(json["personal_finance_category"]["primary"].is_string());
    }
}
