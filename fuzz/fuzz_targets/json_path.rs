//! The HTTP fetcher's extraction: a JSON pointer (`fields = { x = "/a/b" }`) checked, then read
//! from an arbitrary response document and decoded with each declared type, as a response is
//! turned into a row.
//!
//! The contract: nothing panics; a pointer that parses resolves to what `serde_json` finds at
//! it; a cell is a value of its declared type, null, or an error naming the pointer.
//!
//! Input: the pointer, a newline, then the JSON document.
#![no_main]

use fetcher_api::{FeatureType, Value};
use fetcher_http::decode::{Pointer, decode_cell, decode_record, default_pointer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (pointer, document) = text.split_once('\n').unwrap_or((text, "{}"));

    // The default pointer of any feature name is a valid pointer that finds that very key.
    let default = default_pointer(pointer);
    let parsed = Pointer::parse(&default).expect("a default pointer is valid");
    let mut object = serde_json::Map::new();
    object.insert(pointer.to_owned(), serde_json::Value::Bool(true));
    let object = serde_json::Value::Object(object);
    assert_eq!(
        parsed.resolve(&object),
        Some(&serde_json::Value::Bool(true))
    );

    let Ok(pointer) = Pointer::parse(pointer) else {
        return;
    };
    let Ok(doc) = serde_json::from_str::<serde_json::Value>(document) else {
        return;
    };
    assert_eq!(pointer.resolve(&doc), doc.pointer(pointer.as_str()));
    for ty in FeatureType::ALL {
        match decode_cell("fuzz", &doc, &pointer, ty) {
            Ok(Value::Null) => {}
            Ok(value) => assert_eq!(value.feature_type(), Some(ty), "{value:?}"),
            Err(e) => assert!(e.0.contains(pointer.as_str()), "{e:?}"),
        }
    }
    let features: Vec<_> = FeatureType::ALL.iter().map(|ty| (&pointer, *ty)).collect();
    let record = decode_record("fuzz", &doc, &features, Some(&pointer));
    assert_eq!(record.cells.len(), features.len());
});
