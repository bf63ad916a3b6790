//! JSON for JWT headers and payloads with duplicate member names refused, at every depth.
//! RFC 7515 §5.2 allows "last one wins" instead, but two parsers on the path (this sidecar and
//! the app behind it) may pick different copies of `aud`, `scope` or `sub`; refusing removes the
//! ambiguity.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// A JSON value whose objects had no duplicate member names.
pub(crate) struct StrictValue(pub Value);

impl<'de> Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(StrictValue(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let StrictValue(value) = map.next_value()?;
            if out.contains_key(&key) {
                let shown: String = key.chars().take(64).collect();
                return Err(de::Error::custom(format!("duplicate member {shown:?}")));
            }
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::StrictValue;

    #[test]
    fn duplicates_are_refused_at_any_depth_and_the_rest_parses_as_serde_json_does() {
        for bad in [
            r#"{"aud":"a","aud":"b"}"#,
            r#"{"x":{"scope":"r","scope":"w"}}"#,
            r#"[{"k":1,"k":1}]"#,
        ] {
            let err = serde_json::from_str::<StrictValue>(bad).err().expect(bad);
            assert!(err.to_string().contains("duplicate member"), "{err}");
        }
        for good in [
            r#"{"aud":["a","b"],"n":1.5,"m":-3,"u":18446744073709551615,"z":null,"t":true}"#,
            r#"{"a":{"a":{"a":1}}}"#,
            "[]",
        ] {
            let strict = serde_json::from_str::<StrictValue>(good).expect(good).0;
            let plain: serde_json::Value = serde_json::from_str(good).unwrap();
            assert_eq!(strict, plain);
        }
    }
}
