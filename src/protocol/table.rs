//! Field tables from untrusted bytes: a bound on their nesting.
//!
//! amq-protocol parses (and later drops, clones, prints and re-encodes) nested
//! field tables and arrays recursively. Six bytes nest one more table, so one
//! 128 KiB frame holds ~20,000 levels, far past what a 2 MiB tokio worker stack
//! takes: a single frame could kill the whole broker with a stack overflow (found
//! by fuzzing, see tests/fuzz_regressions.rs). Everything here walks the wire
//! format without building anything, with its own recursion bounded by
//! `MAX_DEPTH`, so that amq-protocol's parser only ever sees bounded nesting.

use amq_protocol::protocol::basic::{parse_properties as amqp_parse_properties, AMQPProperties};
use amq_protocol::types::{parsing::parse_field_table, FieldTable};

/// The deepest nesting of tables and arrays accepted (the outermost table is
/// level 1). Clients nest a handful of levels (x-death: headers → array →
/// table → array); 64 leaves room while keeping recursion shallow.
pub const MAX_DEPTH: usize = 64;

#[derive(Debug, PartialEq)]
enum Stop {
    TooDeep,
    /// Not a valid encoding: left for the real parser to refuse.
    Malformed,
}

struct Cur<'a>(&'a [u8]);

impl<'a> Cur<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Stop> {
        if self.0.len() < n {
            return Err(Stop::Malformed);
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, Stop> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, Stop> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, Stop> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn short_string(&mut self) -> Result<(), Stop> {
        let n = self.u8()? as usize;
        self.take(n).map(|_| ())
    }
    fn sized(&mut self) -> Result<Cur<'a>, Stop> {
        let n = self.u32()? as usize;
        self.take(n).map(Cur)
    }
}

/// A table at `depth` (its length prefix first).
fn table(c: &mut Cur<'_>, depth: usize) -> Result<(), Stop> {
    if depth > MAX_DEPTH {
        return Err(Stop::TooDeep);
    }
    let mut inner = c.sized()?;
    while !inner.0.is_empty() {
        inner.short_string()?;
        value(&mut inner, depth)?;
    }
    Ok(())
}

fn array(c: &mut Cur<'_>, depth: usize) -> Result<(), Stop> {
    if depth > MAX_DEPTH {
        return Err(Stop::TooDeep);
    }
    let mut inner = c.sized()?;
    while !inner.0.is_empty() {
        value(&mut inner, depth)?;
    }
    Ok(())
}

/// One typed value inside a table or array at `depth`. The type letters are
/// amq-protocol's (RabbitMQ's): 's' and 'U' are 16-bit, 'l' and 'L' 64-bit.
fn value(c: &mut Cur<'_>, depth: usize) -> Result<(), Stop> {
    let fixed = match c.u8()? {
        b't' | b'b' | b'B' => 1,
        b's' | b'U' | b'u' => 2,
        b'I' | b'i' | b'f' => 4,
        b'D' => 5,
        b'l' | b'L' | b'd' | b'T' => 8,
        b'V' => 0,
        b'S' | b'x' => return c.sized().map(|_| ()),
        b'A' => return array(c, depth + 1),
        b'F' => return table(c, depth + 1),
        _ => return Err(Stop::Malformed),
    };
    c.take(fixed).map(|_| ())
}

/// Whether the field table at the front of `b` nests deeper than `MAX_DEPTH`.
/// Malformed bytes are not "too deep": the real parser refuses them.
pub fn table_too_deep(b: &[u8]) -> bool {
    table(&mut Cur(b), 1) == Err(Stop::TooDeep)
}

/// amq-protocol's field-table parser, refusing deep nesting first.
pub fn parse_table(b: &[u8]) -> Option<(&[u8], FieldTable)> {
    if table_too_deep(b) {
        return None;
    }
    parse_field_table(b).ok()
}

/// Whether basic properties (flags, then the list) carry a too-deep `headers`.
pub fn properties_too_deep(raw: &[u8]) -> bool {
    let mut c = Cur(raw);
    let walk = |c: &mut Cur<'_>| -> Result<(), Stop> {
        let flags = c.u16()?;
        // content-type, content-encoding, then headers: the only table.
        if flags & 0x8000 != 0 {
            c.short_string()?;
        }
        if flags & 0x4000 != 0 {
            c.short_string()?;
        }
        if flags & 0x2000 != 0 {
            table(c, 1)?;
        }
        Ok(())
    };
    walk(&mut c) == Err(Stop::TooDeep)
}

/// amq-protocol's property parser, refusing deep nesting first.
pub fn parse_properties(raw: &[u8]) -> Option<(&[u8], AMQPProperties)> {
    if properties_too_deep(raw) {
        return None;
    }
    amqp_parse_properties(raw).ok()
}

#[derive(Clone, Copy)]
enum Field {
    Octet,
    Short,
    ShortString,
    /// One octet of packed bits.
    Bits,
    Table,
}

/// The arguments of each method that carries a field table, up to that table.
fn layout(class_id: u16, method_id: u16) -> &'static [Field] {
    use Field::*;
    match (class_id, method_id) {
        // connection.start: version-major, version-minor, server-properties.
        (10, 10) => &[Octet, Octet, Table],
        // connection.start-ok: client-properties.
        (10, 11) => &[Table],
        // exchange.declare: ticket, exchange, type, flags, arguments.
        (40, 10) => &[Short, ShortString, ShortString, Bits, Table],
        // exchange.bind / unbind: ticket, destination, source, key, nowait, arguments.
        (40, 30) | (40, 40) => &[Short, ShortString, ShortString, ShortString, Bits, Table],
        // queue.declare: ticket, queue, flags, arguments.
        (50, 10) => &[Short, ShortString, Bits, Table],
        // queue.bind: ticket, queue, exchange, key, nowait, arguments.
        (50, 20) => &[Short, ShortString, ShortString, ShortString, Bits, Table],
        // queue.unbind: ticket, queue, exchange, key, arguments (no flags).
        (50, 50) => &[Short, ShortString, ShortString, ShortString, Table],
        // basic.consume: ticket, queue, consumer-tag, flags, arguments.
        (60, 20) => &[Short, ShortString, ShortString, Bits, Table],
        _ => &[],
    }
}

/// Whether a method's arguments (after class and method ids) carry a field
/// table nested deeper than `MAX_DEPTH`.
pub fn method_too_deep(class_id: u16, method_id: u16, args: &[u8]) -> bool {
    let mut c = Cur(args);
    let mut walk = || -> Result<(), Stop> {
        for f in layout(class_id, method_id) {
            match f {
                Field::Octet | Field::Bits => c.take(1).map(|_| ())?,
                Field::Short => c.take(2).map(|_| ())?,
                Field::ShortString => c.short_string()?,
                Field::Table => table(&mut c, 1)?,
            }
        }
        Ok(())
    };
    walk() == Err(Stop::TooDeep)
}

/// An integer of any AMQP integer type.
pub fn as_i128(v: &amq_protocol::types::AMQPValue) -> Option<i128> {
    use amq_protocol::types::AMQPValue;
    Some(match v {
        AMQPValue::ShortShortInt(x) => *x as i128,
        AMQPValue::ShortShortUInt(x) => *x as i128,
        AMQPValue::ShortInt(x) => *x as i128,
        AMQPValue::ShortUInt(x) => *x as i128,
        AMQPValue::LongInt(x) => *x as i128,
        AMQPValue::LongUInt(x) => *x as i128,
        AMQPValue::LongLongInt(x) => *x as i128,
        AMQPValue::Timestamp(x) => *x as i128,
        _ => return None,
    })
}

/// A text value (long or short string) of a field table.
pub fn as_text(v: &amq_protocol::types::AMQPValue) -> Option<String> {
    use amq_protocol::types::AMQPValue as V;
    match v {
        V::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        V::ShortString(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

/// `levels` tables nested inside each other, as wire bytes (length prefix
/// first): each level is a length, an empty key and type 'F'.
#[cfg(test)]
pub(crate) fn nested_for_tests(levels: usize) -> Vec<u8> {
    let mut t = Vec::with_capacity(6 * levels);
    for k in (2..=levels).rev() {
        t.extend_from_slice(&(6 * (k as u32 - 1)).to_be_bytes());
        t.extend_from_slice(&[0, b'F']);
    }
    t.extend_from_slice(&0u32.to_be_bytes());
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::frame::WriteContext;
    use amq_protocol::types::{generation::gen_field_table, AMQPValue, FieldArray};

    #[test]
    fn nesting_up_to_the_limit_parses() {
        let b = nested_for_tests(MAX_DEPTH);
        assert!(!table_too_deep(&b));
        assert!(parse_table(&b).is_some());
        let b = nested_for_tests(MAX_DEPTH + 1);
        assert!(table_too_deep(&b));
        assert!(parse_table(&b).is_none());
    }

    #[test]
    fn arrays_count_as_levels_and_types_are_skipped_right() {
        // A realistic table: every scalar type, a string, bytes, an array of tables.
        let mut inner = FieldTable::default();
        inner.insert("count".into(), AMQPValue::LongLongInt(1));
        let mut arr = FieldArray::default();
        arr.push(AMQPValue::FieldTable(inner));
        arr.push(AMQPValue::LongString("x".into()));
        let mut t = FieldTable::default();
        t.insert("x-death".into(), AMQPValue::FieldArray(arr));
        t.insert("b".into(), AMQPValue::Boolean(true));
        t.insert("d".into(), AMQPValue::Double(1.5));
        t.insert("f".into(), AMQPValue::Float(1.5));
        t.insert("i".into(), AMQPValue::ShortInt(-2));
        t.insert("ts".into(), AMQPValue::Timestamp(7));
        t.insert("v".into(), AMQPValue::Void);
        t.insert("x".into(), AMQPValue::ByteArray(vec![1, 2].into()));
        let b = gen_field_table(&t)(WriteContext::from(Vec::new()))
            .unwrap()
            .into_inner()
            .0;
        assert_eq!(table(&mut Cur(&b), 1), Ok(()));
        // Three levels: table, array, table.
        assert_eq!(table(&mut Cur(&b), MAX_DEPTH - 2), Ok(()));
        assert_eq!(table(&mut Cur(&b), MAX_DEPTH - 1), Err(Stop::TooDeep));
        assert!(parse_table(&b).is_some());
    }
}
