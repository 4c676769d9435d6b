//! The features each endpoint provides, and how they are derived from Plaid's answers.
//!
//! # Contract
//! Every feature has one fixed type, and a view may declare only features of its endpoint with
//! that type ([`Feature::parse`], checked by `validate`). Values are pure functions of the
//! decoded answer and of "now" (the wall clock, or the source's `as_of`), so they are unit
//! tested with a fixed clock. Null means "no value": e.g. no credit account to compute a
//! utilisation from, or transactions Plaid has not extracted yet (`NOT_READY`).
//!
//! # Definitions
//! - Amounts: only accounts and transactions in the view's `currency` are summed.
//! - `balance` / `accounts`: `available_total` sums depository accounts' `available` (their
//!   `current` when `available` is null); `current_total` their `current`;
//!   `credit_balance_total` and `limit_total` the credit accounts' `current` (owed) and `limit`;
//!   `utilisation` = owed / limit over credit accounts that report both (null if the limit sum
//!   is 0). Counts are over all accounts, by Plaid `type`.
//! - `transactions`: Plaid's `amount` is positive for money leaving the account, so a debit has
//!   `amount > 0` and a credit `amount < 0`; sums are positive magnitudes. A transaction is in
//!   the N-day window when its `date` is within the N days ending today (UTC): `_1d` is today.
//!   Pending transactions count (they are money already committed); `pending_count` counts them
//!   alone. Fee counts use `personal_finance_category` (`BANK_FEES_OVERDRAFT_FEES`, and primary
//!   `BANK_FEES`). `distinct_merchants_30d` counts distinct `merchant_name`s (case-insensitive)
//!   of the window's debits.
//! - `item`: `has_error` / `error_code` read `item.error`; an Item-scoped error answer of
//!   `/item/get` itself (e.g. `ITEM_LOGIN_REQUIRED`) is that same data, not a failed fetch.
//! - `identity_match`: each score is the best (highest) over the Item's accounts.

use std::collections::{HashMap, HashSet};

use fetcher_api::{FeatureType, Value};
use serde::Deserialize;

use crate::time::{DAY, parse_date, parse_datetime};

/// The Plaid call a view reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Endpoint {
    /// `/accounts/balance/get`: balances fetched from the bank now (seconds).
    Balance,
    /// `/accounts/get`: balances as Plaid last cached them.
    Accounts,
    /// `/transactions/sync`, from the start of history, paged to completion.
    Transactions,
    /// `/item/get`: the Item's health.
    Item,
    /// `/identity/match`: how well the user's details match the account owners'.
    IdentityMatch,
}

impl Endpoint {
    /// The name used in configuration.
    pub fn name(self) -> &'static str {
        match self {
            Endpoint::Balance => "balance",
            Endpoint::Accounts => "accounts",
            Endpoint::Transactions => "transactions",
            Endpoint::Item => "item",
            Endpoint::IdentityMatch => "identity_match",
        }
    }

    /// The URL path.
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Balance => "/accounts/balance/get",
            Endpoint::Accounts => "/accounts/get",
            Endpoint::Transactions => "/transactions/sync",
            Endpoint::Item => "/item/get",
            Endpoint::IdentityMatch => "/identity/match",
        }
    }
}

/// The windows of transaction aggregates, in days.
pub const WINDOWS: [u32; 3] = [1, 7, 30];

/// A derived feature.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Feature {
    AvailableTotal,
    CurrentTotal,
    CreditBalanceTotal,
    LimitTotal,
    Utilisation,
    AccountCount,
    DepositoryCount,
    CreditAccountCount,
    LoanCount,
    InvestmentCount,
    DebitCount(u32),
    CreditCount(u32),
    DebitSum(u32),
    CreditSum(u32),
    PendingCount,
    TransactionCount,
    OverdraftFeeCount30d,
    BankFeeCount30d,
    DistinctMerchants30d,
    DaysSinceOldestTxn,
    DaysSinceLatestTxn,
    ItemAgeDays,
    HasError,
    ErrorCode,
    HoursSinceLastSuccessfulUpdate,
    InstitutionId,
    DaysUntilConsentExpiration,
    LegalNameScore,
    PhoneNumberScore,
    EmailAddressScore,
    AddressScore,
    IsPostalCodeMatch,
}

impl Feature {
    /// The features of `endpoint`.
    pub fn all(endpoint: Endpoint) -> Vec<Feature> {
        use Feature::*;
        match endpoint {
            Endpoint::Balance | Endpoint::Accounts => vec![
                AvailableTotal,
                CurrentTotal,
                CreditBalanceTotal,
                LimitTotal,
                Utilisation,
                AccountCount,
                DepositoryCount,
                CreditAccountCount,
                LoanCount,
                InvestmentCount,
            ],
            Endpoint::Transactions => {
                let mut all = Vec::new();
                for w in WINDOWS {
                    all.extend([DebitCount(w), CreditCount(w), DebitSum(w), CreditSum(w)]);
                }
                all.extend([
                    PendingCount,
                    TransactionCount,
                    OverdraftFeeCount30d,
                    BankFeeCount30d,
                    DistinctMerchants30d,
                    DaysSinceOldestTxn,
                    DaysSinceLatestTxn,
                ]);
                all
            }
            Endpoint::Item => vec![
                ItemAgeDays,
                HasError,
                ErrorCode,
                HoursSinceLastSuccessfulUpdate,
                InstitutionId,
                DaysUntilConsentExpiration,
            ],
            Endpoint::IdentityMatch => vec![
                LegalNameScore,
                PhoneNumberScore,
                EmailAddressScore,
                AddressScore,
                IsPostalCodeMatch,
            ],
        }
    }

    /// The feature of `endpoint` called `name`.
    pub fn parse(endpoint: Endpoint, name: &str) -> Option<Feature> {
        Feature::all(endpoint)
            .into_iter()
            .find(|f| f.name() == name)
    }

    /// The feature's name in configuration.
    pub fn name(self) -> String {
        use Feature::*;
        match self {
            AvailableTotal => "available_total".into(),
            CurrentTotal => "current_total".into(),
            CreditBalanceTotal => "credit_balance_total".into(),
            LimitTotal => "limit_total".into(),
            Utilisation => "utilisation".into(),
            AccountCount => "account_count".into(),
            DepositoryCount => "depository_count".into(),
            CreditAccountCount => "credit_count".into(),
            LoanCount => "loan_count".into(),
            InvestmentCount => "investment_count".into(),
            DebitCount(w) => format!("debit_count_{w}d"),
            CreditCount(w) => format!("credit_count_{w}d"),
            DebitSum(w) => format!("debit_sum_{w}d"),
            CreditSum(w) => format!("credit_sum_{w}d"),
            PendingCount => "pending_count".into(),
            TransactionCount => "transaction_count".into(),
            OverdraftFeeCount30d => "overdraft_fee_count_30d".into(),
            BankFeeCount30d => "bank_fee_count_30d".into(),
            DistinctMerchants30d => "distinct_merchants_30d".into(),
            DaysSinceOldestTxn => "days_since_oldest_txn".into(),
            DaysSinceLatestTxn => "days_since_latest_txn".into(),
            ItemAgeDays => "item_age_days".into(),
            HasError => "has_error".into(),
            ErrorCode => "error_code".into(),
            HoursSinceLastSuccessfulUpdate => "hours_since_last_successful_update".into(),
            InstitutionId => "institution_id".into(),
            DaysUntilConsentExpiration => "days_until_consent_expiration".into(),
            LegalNameScore => "legal_name_score".into(),
            PhoneNumberScore => "phone_number_score".into(),
            EmailAddressScore => "email_address_score".into(),
            AddressScore => "address_score".into(),
            IsPostalCodeMatch => "is_postal_code_match".into(),
        }
    }

    /// The feature's type.
    pub fn ty(self) -> FeatureType {
        use Feature::*;
        match self {
            AvailableTotal
            | CurrentTotal
            | CreditBalanceTotal
            | LimitTotal
            | Utilisation
            | DebitSum(_)
            | CreditSum(_)
            | HoursSinceLastSuccessfulUpdate => FeatureType::Double,
            HasError | IsPostalCodeMatch => FeatureType::Bool,
            ErrorCode | InstitutionId => FeatureType::String,
            _ => FeatureType::Int64,
        }
    }
}

/// `(name, type)` of every feature of `endpoint`, for messages and documentation.
pub fn catalog(endpoint: Endpoint) -> Vec<(String, FeatureType)> {
    Feature::all(endpoint)
        .into_iter()
        .map(|f| (f.name(), f.ty()))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Answers, as decoded (only the fields used; Plaid sends many more, which are ignored).

/// `/accounts/get` and `/accounts/balance/get`.
#[derive(Clone, Debug, Deserialize)]
pub struct AccountsResponse {
    pub accounts: Vec<Account>,
    /// Which Item answered (for webhooks, which name Items, not access tokens).
    #[serde(default)]
    pub item: Option<ItemRef>,
}

/// The `item.item_id` of an answer.
#[derive(Clone, Debug, Deserialize)]
pub struct ItemRef {
    pub item_id: String,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Account {
    #[serde(rename = "type")]
    pub ty: String,
    pub balances: Balances,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Balances {
    pub available: Option<f64>,
    pub current: Option<f64>,
    pub limit: Option<f64>,
    pub iso_currency_code: Option<String>,
}

/// One `/transactions/sync` page.
#[derive(Clone, Debug, Deserialize)]
pub struct SyncPage {
    pub added: Vec<Transaction>,
    pub modified: Vec<Transaction>,
    pub removed: Vec<RemovedTransaction>,
    pub next_cursor: String,
    pub has_more: bool,
    #[serde(default)]
    pub transactions_update_status: Option<String>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Transaction {
    pub transaction_id: String,
    pub amount: f64,
    pub iso_currency_code: Option<String>,
    pub date: String,
    #[serde(default)]
    pub merchant_name: Option<String>,
    pub pending: bool,
    #[serde(default)]
    pub personal_finance_category: Option<Category>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Category {
    pub primary: Option<String>,
    pub detailed: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct RemovedTransaction {
    pub transaction_id: String,
}

/// `/item/get`.
#[derive(Clone, Debug, Deserialize)]
pub struct ItemResponse {
    pub item: Item,
    #[serde(default)]
    pub status: Option<ItemStatus>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Item {
    #[serde(default)]
    pub item_id: Option<String>,
    #[serde(default)]
    pub institution_id: Option<String>,
    #[serde(default)]
    pub error: Option<ItemError>,
    #[serde(default)]
    pub created_at: Option<String>,
    #[serde(default)]
    pub consent_expiration_time: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct ItemError {
    pub error_code: String,
}

#[derive(Clone, Debug, Deserialize)]
pub struct ItemStatus {
    #[serde(default)]
    pub transactions: Option<TransactionsStatus>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct TransactionsStatus {
    #[serde(default)]
    pub last_successful_update: Option<String>,
}

/// `/identity/match`.
#[derive(Clone, Debug, Deserialize)]
pub struct MatchResponse {
    pub accounts: Vec<MatchAccount>,
    #[serde(default)]
    pub item: Option<ItemRef>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct MatchAccount {
    #[serde(default)]
    pub legal_name: Option<Score>,
    #[serde(default)]
    pub phone_number: Option<Score>,
    #[serde(default)]
    pub email_address: Option<Score>,
    #[serde(default)]
    pub address: Option<Score>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Score {
    pub score: Option<i64>,
    #[serde(default)]
    pub is_postal_code_match: Option<bool>,
}

// ---------------------------------------------------------------------------------------------
// Derivations.

fn in_currency(code: Option<&str>, currency: &str) -> bool {
    code == Some(currency)
}

fn sum(values: impl Iterator<Item = f64>) -> Value {
    let mut total = None;
    for v in values {
        *total.get_or_insert(0.0) += v;
    }
    total.map_or(Value::Null, Value::Double)
}

/// The value of a balance feature.
pub fn balance_value(accounts: &[Account], currency: &str, feature: Feature) -> Value {
    let of_type = |ty: &'static str| accounts.iter().filter(move |a| a.ty == ty);
    let priced = |ty: &'static str| {
        of_type(ty).filter(|a| in_currency(a.balances.iso_currency_code.as_deref(), currency))
    };
    let count = |ty: &'static str| Value::Int64(of_type(ty).count() as i64);
    match feature {
        Feature::AvailableTotal => {
            sum(priced("depository").filter_map(|a| a.balances.available.or(a.balances.current)))
        }
        Feature::CurrentTotal => sum(priced("depository").filter_map(|a| a.balances.current)),
        Feature::CreditBalanceTotal => sum(priced("credit").filter_map(|a| a.balances.current)),
        Feature::LimitTotal => sum(priced("credit").filter_map(|a| a.balances.limit)),
        Feature::Utilisation => {
            let (owed, limit) = priced("credit")
                .filter_map(|a| Some((a.balances.current?, a.balances.limit?)))
                .fold((0.0, 0.0), |(o, l), (c, m)| (o + c, l + m));
            if limit > 0.0 {
                Value::Double(owed / limit)
            } else {
                Value::Null
            }
        }
        Feature::AccountCount => Value::Int64(accounts.len() as i64),
        Feature::DepositoryCount => count("depository"),
        Feature::CreditAccountCount => count("credit"),
        Feature::LoanCount => count("loan"),
        Feature::InvestmentCount => count("investment"),
        _ => Value::Null,
    }
}

/// The Item's transactions after a full sync: `added` and `modified` upserted by id, `removed`
/// deleted, in page order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TransactionSet {
    by_id: HashMap<String, Transaction>,
}

impl TransactionSet {
    /// Applies one page.
    pub fn apply(&mut self, page: SyncPage) {
        for t in page.added.into_iter().chain(page.modified) {
            self.by_id.insert(t.transaction_id.clone(), t);
        }
        for r in page.removed {
            self.by_id.remove(&r.transaction_id);
        }
    }

    /// How many transactions the set holds.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// The transactions, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Transaction> {
        self.by_id.values()
    }
}

/// Transaction aggregates as of one day.
#[derive(Clone, Debug)]
pub struct TransactionStats {
    /// `(transaction, age in days)` of every transaction.
    dated: Vec<(Transaction, i64)>,
    currency: String,
}

impl TransactionStats {
    /// Dates every transaction relative to `now` (Unix seconds). Fails naming a malformed date.
    pub fn new(set: &TransactionSet, now: i64, currency: &str) -> Result<TransactionStats, String> {
        let today = now.div_euclid(DAY);
        let dated = set
            .iter()
            .map(|t| {
                parse_date(&t.date)
                    .map(|day| (t.clone(), today - day))
                    .ok_or_else(|| format!("transaction date `{}` is not YYYY-MM-DD", t.date))
            })
            .collect::<Result<_, _>>()?;
        Ok(TransactionStats {
            dated,
            currency: currency.to_owned(),
        })
    }

    fn window(&self, days: u32) -> impl Iterator<Item = &Transaction> {
        self.dated
            .iter()
            .filter(move |(_, age)| (0..i64::from(days)).contains(age))
            .map(|(t, _)| t)
    }

    fn priced_window(&self, days: u32) -> impl Iterator<Item = &Transaction> {
        self.window(days)
            .filter(|t| in_currency(t.iso_currency_code.as_deref(), &self.currency))
    }

    /// The value of a transaction feature.
    pub fn value(&self, feature: Feature) -> Value {
        let count = |n: usize| Value::Int64(n as i64);
        match feature {
            Feature::DebitCount(w) => count(self.window(w).filter(|t| t.amount > 0.0).count()),
            Feature::CreditCount(w) => count(self.window(w).filter(|t| t.amount < 0.0).count()),
            Feature::DebitSum(w) => Value::Double(
                self.priced_window(w)
                    .filter(|t| t.amount > 0.0)
                    .map(|t| t.amount)
                    .sum(),
            ),
            Feature::CreditSum(w) => Value::Double(
                self.priced_window(w)
                    .filter(|t| t.amount < 0.0)
                    .map(|t| -t.amount)
                    .sum(),
            ),
            Feature::PendingCount => count(self.dated.iter().filter(|(t, _)| t.pending).count()),
            Feature::TransactionCount => count(self.dated.len()),
            Feature::OverdraftFeeCount30d => count(
                self.window(30)
                    .filter(|t| category(t, true) == Some("BANK_FEES_OVERDRAFT_FEES"))
                    .count(),
            ),
            Feature::BankFeeCount30d => count(
                self.window(30)
                    .filter(|t| category(t, false) == Some("BANK_FEES"))
                    .count(),
            ),
            Feature::DistinctMerchants30d => count(
                self.window(30)
                    .filter(|t| t.amount > 0.0)
                    .filter_map(|t| t.merchant_name.as_deref())
                    .map(str::to_lowercase)
                    .collect::<HashSet<_>>()
                    .len(),
            ),
            Feature::DaysSinceOldestTxn => self
                .dated
                .iter()
                .map(|(_, age)| *age)
                .max()
                .map_or(Value::Null, Value::Int64),
            Feature::DaysSinceLatestTxn => self
                .dated
                .iter()
                .map(|(_, age)| *age)
                .min()
                .map_or(Value::Null, Value::Int64),
            _ => Value::Null,
        }
    }
}

/// A transaction's `personal_finance_category`: its `detailed` or its `primary` value.
fn category(t: &Transaction, detailed: bool) -> Option<&str> {
    let c = t.personal_finance_category.as_ref()?;
    if detailed { &c.detailed } else { &c.primary }.as_deref()
}

/// What an `/item/get` view reads: the answer, or an Item-scoped error code standing for it.
#[derive(Clone, Debug)]
pub enum ItemHealth {
    Answer(ItemResponse),
    /// `/item/get` itself failed with this Item-scoped code (e.g. `ITEM_LOGIN_REQUIRED`).
    Failed(String),
}

/// The value of an item feature as of `now` (Unix seconds). Fails naming a malformed time.
pub fn item_value(health: &ItemHealth, now: i64, feature: Feature) -> Result<Value, String> {
    let response = match health {
        ItemHealth::Failed(code) => {
            return Ok(match feature {
                Feature::HasError => Value::Bool(true),
                Feature::ErrorCode => Value::String(code.clone()),
                _ => Value::Null,
            });
        }
        ItemHealth::Answer(response) => response,
    };
    let time = |field: &str, text: Option<&String>| -> Result<Option<i64>, String> {
        text.map(|t| {
            parse_datetime(t).ok_or_else(|| format!("{field} `{t}` is not an RFC 3339 date-time"))
        })
        .transpose()
    };
    let item = &response.item;
    Ok(match feature {
        Feature::ItemAgeDays => time("item.created_at", item.created_at.as_ref())?
            .map_or(Value::Null, |t| Value::Int64((now - t).div_euclid(DAY))),
        Feature::HasError => Value::Bool(item.error.is_some()),
        Feature::ErrorCode => item
            .error
            .as_ref()
            .map_or(Value::Null, |e| Value::String(e.error_code.clone())),
        Feature::HoursSinceLastSuccessfulUpdate => {
            let last = response
                .status
                .as_ref()
                .and_then(|s| s.transactions.as_ref())
                .and_then(|t| t.last_successful_update.as_ref());
            time("status.transactions.last_successful_update", last)?
                .map_or(Value::Null, |t| Value::Double((now - t) as f64 / 3600.0))
        }
        Feature::InstitutionId => item
            .institution_id
            .clone()
            .map_or(Value::Null, Value::String),
        Feature::DaysUntilConsentExpiration => time(
            "item.consent_expiration_time",
            item.consent_expiration_time.as_ref(),
        )?
        .map_or(Value::Null, |t| Value::Int64((t - now).div_euclid(DAY))),
        _ => Value::Null,
    })
}

/// The value of an identity-match feature: the best score over the accounts.
pub fn match_value(response: &MatchResponse, feature: Feature) -> Value {
    let best = |field: fn(&MatchAccount) -> Option<&Score>| {
        response
            .accounts
            .iter()
            .filter_map(|a| field(a)?.score)
            .max()
            .map_or(Value::Null, Value::Int64)
    };
    match feature {
        Feature::LegalNameScore => best(|a| a.legal_name.as_ref()),
        Feature::PhoneNumberScore => best(|a| a.phone_number.as_ref()),
        Feature::EmailAddressScore => best(|a| a.email_address.as_ref()),
        Feature::AddressScore => best(|a| a.address.as_ref()),
        Feature::IsPostalCodeMatch => {
            let flags: Vec<bool> = response
                .accounts
                .iter()
                .filter_map(|a| a.address.as_ref()?.is_postal_code_match)
                .collect();
            if flags.is_empty() {
                Value::Null
            } else {
                Value::Bool(flags.iter().any(|f| *f))
            }
        }
        _ => Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// 2025-03-10T12:00:00Z.
    const NOW: i64 = 1_741_608_000;

    fn txn(id: &str, amount: f64, date: &str, pending: bool, merchant: Option<&str>) -> Value2 {
        json!({
            "transaction_id": id, "account_id": "a", "amount": amount,
            "iso_currency_code": "USD", "date": date, "authorized_date": null, "datetime": null,
            "name": "x", "merchant_name": merchant, "pending": pending, "payment_channel": "online",
            "personal_finance_category": { "primary": "GENERAL_MERCHANDISE",
                "detailed": "GENERAL_MERCHANDISE_OTHER", "confidence_level": "HIGH" },
        })
    }
    type Value2 = serde_json::Value;

    fn page(added: Vec<Value2>, removed: &[&str]) -> SyncPage {
        serde_json::from_value(json!({
            "added": added, "modified": [],
            "removed": removed.iter().map(|id| json!({"account_id": "a", "transaction_id": id}))
                .collect::<Vec<_>>(),
            "next_cursor": "c", "has_more": false,
            "transactions_update_status": "HISTORICAL_UPDATE_COMPLETE", "request_id": "r",
        }))
        .expect("a sync page")
    }

    #[test]
    fn every_feature_has_one_name_and_type_per_endpoint() {
        for endpoint in [
            Endpoint::Balance,
            Endpoint::Accounts,
            Endpoint::Transactions,
            Endpoint::Item,
            Endpoint::IdentityMatch,
        ] {
            for f in Feature::all(endpoint) {
                assert_eq!(Feature::parse(endpoint, &f.name()), Some(f));
            }
        }
        assert_eq!(
            Feature::parse(Endpoint::Transactions, "debit_sum_7d").map(Feature::ty),
            Some(FeatureType::Double)
        );
        assert_eq!(Feature::parse(Endpoint::Transactions, "debit_sum_2d"), None);
        assert_eq!(Feature::parse(Endpoint::Item, "available_total"), None);
    }

    #[test]
    fn windows_count_and_sum_by_date_relative_to_a_fixed_now() {
        let mut set = TransactionSet::default();
        set.apply(page(
            vec![
                // today: a pending debit and a credit
                txn("t1", 10.0, "2025-03-10", true, Some("Uber")),
                txn("t2", -100.0, "2025-03-10", false, None),
                // 6 days ago: inside 7d, outside 1d
                txn("t3", 20.5, "2025-03-04", false, Some("uber")),
                // 7 days ago: outside 7d, inside 30d
                txn("t4", 5.0, "2025-03-03", false, Some("Starbucks")),
                // 29 and 30 days ago: the edge of the 30-day window
                txn("t5", 1.0, "2025-02-09", false, Some("Amazon")),
                txn("t6", 1000.0, "2025-02-08", false, Some("Old")),
                // removed on a later page
                txn("gone", 999.0, "2025-03-10", false, Some("Gone")),
            ],
            &[],
        ));
        set.apply(page(vec![], &["gone"]));
        assert_eq!(set.len(), 6);
        let stats = TransactionStats::new(&set, NOW, "USD").expect("valid dates");
        let v = |f| stats.value(f);
        assert_eq!(v(Feature::DebitCount(1)), Value::Int64(1));
        assert_eq!(v(Feature::CreditCount(1)), Value::Int64(1));
        assert_eq!(v(Feature::DebitSum(1)), Value::Double(10.0));
        assert_eq!(v(Feature::CreditSum(1)), Value::Double(100.0));
        assert_eq!(v(Feature::DebitCount(7)), Value::Int64(2));
        assert_eq!(v(Feature::DebitSum(7)), Value::Double(30.5));
        assert_eq!(v(Feature::DebitCount(30)), Value::Int64(4));
        assert_eq!(v(Feature::DebitSum(30)), Value::Double(36.5));
        assert_eq!(v(Feature::CreditSum(30)), Value::Double(100.0));
        assert_eq!(v(Feature::PendingCount), Value::Int64(1));
        assert_eq!(v(Feature::TransactionCount), Value::Int64(6));
        // Uber and uber are one merchant; the credit has none; Old is 30 days ago.
        assert_eq!(v(Feature::DistinctMerchants30d), Value::Int64(3));
        assert_eq!(v(Feature::DaysSinceOldestTxn), Value::Int64(30));
        assert_eq!(v(Feature::DaysSinceLatestTxn), Value::Int64(0));
        assert_eq!(v(Feature::OverdraftFeeCount30d), Value::Int64(0));

        let empty = TransactionStats::new(&TransactionSet::default(), NOW, "USD").expect("ok");
        assert_eq!(empty.value(Feature::DaysSinceOldestTxn), Value::Null);
        assert_eq!(empty.value(Feature::DebitSum(30)), Value::Double(0.0));

        let mut bad = TransactionSet::default();
        bad.apply(page(vec![txn("b", 1.0, "03/10/2025", false, None)], &[]));
        let e = TransactionStats::new(&bad, NOW, "USD").unwrap_err();
        assert_eq!(e, "transaction date `03/10/2025` is not YYYY-MM-DD");
    }

    #[test]
    fn fees_use_the_personal_finance_category_and_sums_keep_to_one_currency() {
        let mut fee = txn("f", 35.0, "2025-03-01", false, None);
        fee["personal_finance_category"] =
            json!({"primary": "BANK_FEES", "detailed": "BANK_FEES_OVERDRAFT_FEES"});
        let mut atm = txn("a", 3.0, "2025-03-01", false, None);
        atm["personal_finance_category"] =
            json!({"primary": "BANK_FEES", "detailed": "BANK_FEES_ATM_FEES"});
        let mut euro = txn("e", 50.0, "2025-03-10", false, None);
        euro["iso_currency_code"] = json!("EUR");
        let mut set = TransactionSet::default();
        set.apply(page(vec![fee, atm, euro], &[]));
        let stats = TransactionStats::new(&set, NOW, "USD").expect("valid");
        assert_eq!(stats.value(Feature::OverdraftFeeCount30d), Value::Int64(1));
        assert_eq!(stats.value(Feature::BankFeeCount30d), Value::Int64(2));
        assert_eq!(stats.value(Feature::DebitCount(1)), Value::Int64(1));
        assert_eq!(stats.value(Feature::DebitSum(1)), Value::Double(0.0));
    }

    #[test]
    fn balances_total_by_account_type() {
        let accounts: AccountsResponse = serde_json::from_value(json!({"accounts": [
            {"type": "depository", "balances": {"available": 100.0, "current": 110.0, "limit": null, "iso_currency_code": "USD"}},
            {"type": "depository", "balances": {"available": null, "current": 50.0, "limit": null, "iso_currency_code": "USD"}},
            {"type": "credit", "balances": {"available": 700.0, "current": 300.0, "limit": 1000.0, "iso_currency_code": "USD"}},
            {"type": "credit", "balances": {"available": null, "current": 100.0, "limit": null, "iso_currency_code": "USD"}},
            {"type": "depository", "balances": {"available": 9.0, "current": 9.0, "limit": null, "iso_currency_code": "EUR"}},
            {"type": "loan", "balances": {"available": null, "current": 5000.0, "limit": null, "iso_currency_code": "USD"}},
        ]}))
        .expect("accounts");
        let v = |f| balance_value(&accounts.accounts, "USD", f);
        assert_eq!(v(Feature::AvailableTotal), Value::Double(150.0));
        assert_eq!(v(Feature::CurrentTotal), Value::Double(160.0));
        assert_eq!(v(Feature::CreditBalanceTotal), Value::Double(400.0));
        assert_eq!(v(Feature::LimitTotal), Value::Double(1000.0));
        assert_eq!(v(Feature::Utilisation), Value::Double(0.3));
        assert_eq!(v(Feature::AccountCount), Value::Int64(6));
        assert_eq!(v(Feature::DepositoryCount), Value::Int64(3));
        assert_eq!(v(Feature::CreditAccountCount), Value::Int64(2));
        assert_eq!(v(Feature::LoanCount), Value::Int64(1));
        assert_eq!(v(Feature::InvestmentCount), Value::Int64(0));
        assert_eq!(
            balance_value(&accounts.accounts[..2], "USD", Feature::Utilisation),
            Value::Null,
            "no credit account, no utilisation"
        );
    }

    #[test]
    fn item_health_reads_errors_as_data() {
        let response: ItemResponse = serde_json::from_value(json!({
            "item": {"item_id": "i", "institution_id": "ins_3", "created_at": "2024-03-10T12:00:00Z",
                     "error": {"error_type": "ITEM_ERROR", "error_code": "ITEM_LOGIN_REQUIRED"},
                     "consent_expiration_time": null},
            "status": {"transactions": {"last_successful_update": "2025-03-10T09:00:00Z",
                                        "last_failed_update": null}},
        }))
        .expect("item");
        let health = ItemHealth::Answer(response);
        let v = |f| item_value(&health, NOW, f).expect("valid");
        assert_eq!(v(Feature::ItemAgeDays), Value::Int64(365));
        assert_eq!(v(Feature::HasError), Value::Bool(true));
        assert_eq!(
            v(Feature::ErrorCode),
            Value::String("ITEM_LOGIN_REQUIRED".into())
        );
        assert_eq!(
            v(Feature::HoursSinceLastSuccessfulUpdate),
            Value::Double(3.0)
        );
        assert_eq!(v(Feature::InstitutionId), Value::String("ins_3".into()));
        assert_eq!(v(Feature::DaysUntilConsentExpiration), Value::Null);

        let failed = ItemHealth::Failed("ITEM_LOGIN_REQUIRED".into());
        assert_eq!(
            item_value(&failed, NOW, Feature::HasError),
            Ok(Value::Bool(true))
        );
        assert_eq!(
            item_value(&failed, NOW, Feature::ItemAgeDays),
            Ok(Value::Null)
        );
    }

    #[test]
    fn identity_scores_are_the_best_over_accounts() {
        let response: MatchResponse = serde_json::from_value(json!({"accounts": [
            {"legal_name": {"score": 40}, "phone_number": {"score": 0}, "email_address": null,
             "address": {"score": 20, "is_postal_code_match": false}},
            {"legal_name": {"score": 90}, "phone_number": {"score": 100}, "email_address": null,
             "address": {"score": 10, "is_postal_code_match": true}},
        ]}))
        .expect("match");
        assert_eq!(
            match_value(&response, Feature::LegalNameScore),
            Value::Int64(90)
        );
        assert_eq!(
            match_value(&response, Feature::PhoneNumberScore),
            Value::Int64(100)
        );
        assert_eq!(
            match_value(&response, Feature::EmailAddressScore),
            Value::Null
        );
        assert_eq!(
            match_value(&response, Feature::AddressScore),
            Value::Int64(20)
        );
        assert_eq!(
            match_value(&response, Feature::IsPostalCodeMatch),
            Value::Bool(true)
        );
    }
}
