//! The types the checker reasons with: CEL's, plus the pseudo-type of a view name.

use std::fmt;

use fetcher_api::FeatureType;

/// A CEL type, as far as the checker needs one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ty {
    Int,
    Uint,
    Double,
    String,
    Bool,
    Bytes,
    Null,
    Timestamp,
    Duration,
    List(Box<Ty>),
    Map(Box<Ty>, Box<Ty>),
    /// Decided at run time: what an element of an empty list literal or `dyn(x)` is.
    Dyn,
    /// A type value, e.g. `int` in `type(x) == int`.
    Type,
    /// A view's name: only `view.feature` (or `has(view.feature)`) can be made of it.
    View(String),
}

impl Ty {
    /// The CEL type of values of a feature type.
    pub fn of(ty: FeatureType) -> Ty {
        match ty {
            FeatureType::Int64 => Ty::Int,
            FeatureType::Double => Ty::Double,
            FeatureType::String => Ty::String,
            FeatureType::Bool => Ty::Bool,
            FeatureType::Bytes => Ty::Bytes,
            FeatureType::Timestamp => Ty::Timestamp,
            FeatureType::Int64List => Ty::List(Box::new(Ty::Int)),
            FeatureType::DoubleList => Ty::List(Box::new(Ty::Double)),
            FeatureType::StringList => Ty::List(Box::new(Ty::String)),
        }
    }

    /// Whether this type holds `dyn` anywhere (so the run time decides part of it).
    pub fn has_dyn(&self) -> bool {
        match self {
            Ty::Dyn => true,
            Ty::List(e) => e.has_dyn(),
            Ty::Map(k, v) => k.has_dyn() || v.has_dyn(),
            _ => false,
        }
    }

    /// Whether a value of type `self` can be where `other` is expected, `dyn` matching anything.
    pub fn fits(&self, other: &Ty) -> bool {
        match (self, other) {
            (Ty::Dyn, _) | (_, Ty::Dyn) => true,
            (Ty::List(a), Ty::List(b)) => a.fits(b),
            (Ty::Map(ka, va), Ty::Map(kb, vb)) => ka.fits(kb) && va.fits(vb),
            (a, b) => a == b,
        }
    }

    /// The more precise of two types that fit each other: `list(dyn)` and `list(int)` give
    /// `list(int)`.
    pub fn meet(&self, other: &Ty) -> Ty {
        match (self, other) {
            (Ty::Dyn, t) | (t, Ty::Dyn) => t.clone(),
            (Ty::List(a), Ty::List(b)) => Ty::List(Box::new(a.meet(b))),
            (Ty::Map(ka, va), Ty::Map(kb, vb)) => {
                Ty::Map(Box::new(ka.meet(kb)), Box::new(va.meet(vb)))
            }
            (a, _) => a.clone(),
        }
    }

    /// The type of several values that must share one: their meet if they fit, else `dyn`.
    pub fn join(&self, other: &Ty) -> Ty {
        if self.fits(other) {
            self.meet(other)
        } else {
            Ty::Dyn
        }
    }
}

impl fmt::Display for Ty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ty::Int => f.write_str("int"),
            Ty::Uint => f.write_str("uint"),
            Ty::Double => f.write_str("double"),
            Ty::String => f.write_str("string"),
            Ty::Bool => f.write_str("bool"),
            Ty::Bytes => f.write_str("bytes"),
            Ty::Null => f.write_str("null"),
            Ty::Timestamp => f.write_str("timestamp"),
            Ty::Duration => f.write_str("duration"),
            Ty::List(e) => write!(f, "list({e})"),
            Ty::Map(k, v) => write!(f, "map({k}, {v})"),
            Ty::Dyn => f.write_str("dyn"),
            Ty::Type => f.write_str("type"),
            Ty::View(name) => write!(f, "view `{name}`"),
        }
    }
}

/// The CEL type a declared feature type is written as in messages: `int64` is CEL's `int`.
pub fn cel_name(ty: FeatureType) -> String {
    Ty::of(ty).to_string()
}
