//! The demo's request population, drawn deterministically: what drift tests profile and then
//! serve again, the same or changed.

use proto::v1;

use crate::{d, map, s};

/// SplitMix64.
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
}

/// A request's entities or context.
pub type Fields = std::collections::BTreeMap<String, v1::Value>;

/// Request `i` of the population drawn with `seed`: a demo customer (one in fifty unknown),
/// card and merchant; an amount between 1 and about 400 (log-uniform, in cents), times
/// `amount_times`; USD, EUR or GBP; pos, ecom or atm.
pub fn request(seed: u64, i: usize, amount_times: f64) -> (Fields, Fields, f64) {
    let mut rng = Rng(seed.wrapping_mul(1_000_003).wrapping_add(i as u64));
    let user = if rng.below(50) == 0 {
        "u_99999".to_owned()
    } else {
        format!("u_{:05}", rng.below(10_000))
    };
    let card = format!("c_{:05}", rng.below(10_000));
    let merchant = format!("m_{:04}", rng.below(2_000));
    let amount = ((rng.unit() * 6.0).exp() * 100.0).round() / 100.0 * amount_times;
    let currency = match rng.below(10) {
        0..7 => "USD",
        7..9 => "EUR",
        _ => "GBP",
    };
    let channel = match rng.below(10) {
        0..5 => "pos",
        5..9 => "ecom",
        _ => "atm",
    };
    (
        map(&[
            ("user_id", s(&user)),
            ("card_id", s(&card)),
            ("merchant_id", s(&merchant)),
        ]),
        map(&[
            ("amount", d(amount)),
            ("currency", s(currency)),
            ("channel", s(channel)),
        ]),
        amount,
    )
}
