//! Headers-exchange matching as RabbitMQ does it: `x-match` = `all` (default),
//! `any`, `all-with-x` or `any-with-x`; binding arguments whose names start with
//! `x-` are ignored unless the `-with-x` forms are used; a `Void` binding value
//! matches on presence; values compare by value (1 as a long equals 1 as a byte).

use amq_protocol::types::{AMQPValue, FieldTable};

pub fn matches(binding: &FieldTable, headers: Option<&FieldTable>) -> bool {
    let mode = match binding.inner().get("x-match") {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        Some(AMQPValue::ShortString(s)) => s.as_str().to_string(),
        _ => "all".to_string(),
    };
    let (any, with_x) = match mode.as_str() {
        "any" => (true, false),
        "any-with-x" => (true, true),
        "all-with-x" => (false, true),
        _ => (false, false),
    };
    let empty = FieldTable::default();
    let headers = headers.unwrap_or(&empty);
    let mut args = binding
        .inner()
        .iter()
        .filter(|(k, _)| k.as_str() != "x-match" && (with_x || !k.as_str().starts_with("x-")));
    let one = |(k, v): (&amq_protocol::types::ShortString, &AMQPValue)| match headers
        .inner()
        .get(k.as_str())
    {
        None => false,
        Some(h) => matches!(v, AMQPValue::Void) || value_eq(v, h),
    };
    if any {
        args.any(one)
    } else {
        args.all(one)
    }
}

pub use crate::protocol::table::as_i128;

fn as_bytes(v: &AMQPValue) -> Option<&[u8]> {
    match v {
        AMQPValue::LongString(s) => Some(s.as_bytes()),
        AMQPValue::ShortString(s) => Some(s.as_str().as_bytes()),
        AMQPValue::ByteArray(b) => Some(b.as_slice()),
        _ => None,
    }
}

/// Value equality that ignores the integer width and string kind.
pub fn value_eq(a: &AMQPValue, b: &AMQPValue) -> bool {
    if let (Some(x), Some(y)) = (as_i128(a), as_i128(b)) {
        return x == y;
    }
    if let (Some(x), Some(y)) = (as_bytes(a), as_bytes(b)) {
        return x == y;
    }
    a == b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(items: &[(&str, AMQPValue)]) -> FieldTable {
        let mut t = FieldTable::default();
        for (k, v) in items {
            t.insert((*k).into(), v.clone());
        }
        t
    }

    fn s(v: &str) -> AMQPValue {
        AMQPValue::LongString(v.into())
    }

    #[test]
    fn all_and_any() {
        let all = table(&[
            ("x-match", s("all")),
            ("a", s("1")),
            ("b", AMQPValue::LongInt(2)),
        ]);
        let any = table(&[
            ("x-match", s("any")),
            ("a", s("1")),
            ("b", AMQPValue::LongInt(2)),
        ]);
        let both = table(&[("a", s("1")), ("b", AMQPValue::LongLongInt(2))]);
        let one = table(&[("a", s("1"))]);
        assert!(matches(&all, Some(&both)));
        assert!(!matches(&all, Some(&one)));
        assert!(matches(&any, Some(&one)));
        assert!(!matches(&any, None));
        assert!(
            matches(&table(&[]), None),
            "all with no keys matches everything"
        );
    }

    #[test]
    fn x_keys_ignored_and_void_is_presence() {
        let b = table(&[("x-other", s("z")), ("k", AMQPValue::Void)]);
        assert!(matches(
            &b,
            Some(&table(&[("k", AMQPValue::Boolean(true))]))
        ));
        assert!(!matches(&b, Some(&table(&[("x-other", s("z"))]))));
        let withx = table(&[("x-match", s("all-with-x")), ("x-other", s("z"))]);
        assert!(matches(&withx, Some(&table(&[("x-other", s("z"))]))));
        assert!(!matches(&withx, None));
    }
}
