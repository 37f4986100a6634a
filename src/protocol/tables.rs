//! How deep field tables and arrays nest, found before amq-protocol parses
//! them. Its parser recurses once per nested table or array: a 4 KiB
//! start-ok nests ~580 deep and a 128 KiB queue.declare ~18000, enough to
//! overflow a worker thread's stack and abort the whole broker (a debug build
//! died at ~250 levels). These walks are iterative, only locate tables and
//! measure their depth, and leave anything malformed to the real parser.

/// Deepest nesting accepted (the table itself is level 1). Real arguments
/// and headers nest two or three levels; RabbitMQ sets no limit.
pub const MAX_DEPTH: usize = 64;

fn be_u32(buf: &[u8], pos: usize) -> Option<usize> {
    let b = buf.get(pos..pos.checked_add(4)?)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
}

/// Whether the field table whose 4-byte length starts `buf` nests at most
/// `MAX_DEPTH` levels. Malformed input answers true: the parser refuses it.
pub fn table_ok(buf: &[u8]) -> bool {
    let Some(len) = be_u32(buf, 0) else {
        return true;
    };
    let mut pos = 4usize;
    let Some(end) = pos.checked_add(len).filter(|e| *e <= buf.len()) else {
        return true;
    };
    // Open containers: where each ends, and whether it is a table (whose
    // entries have a name) or an array.
    let mut open: Vec<(usize, bool)> = vec![(end, true)];
    while let Some(&(end, is_table)) = open.last() {
        if pos >= end {
            if pos > end {
                return true;
            }
            open.pop();
            continue;
        }
        if is_table {
            pos += 1 + buf[pos] as usize;
            if pos >= end {
                return true;
            }
        }
        let kind = buf[pos];
        pos += 1;
        let skip = match kind {
            b't' | b'b' | b'B' => 1,
            b's' | b'U' | b'u' => 2,
            b'I' | b'i' | b'f' => 4,
            b'D' => 5,
            b'l' | b'L' | b'd' | b'T' => 8,
            b'V' => 0,
            b'S' | b'x' => match be_u32(buf, pos) {
                Some(n) => 4 + n,
                None => return true,
            },
            b'F' | b'A' => {
                let Some(n) = be_u32(buf, pos) else {
                    return true;
                };
                pos += 4;
                let Some(inner_end) = pos.checked_add(n).filter(|e| *e <= end) else {
                    return true;
                };
                if open.len() >= MAX_DEPTH {
                    return false;
                }
                open.push((inner_end, kind == b'F'));
                continue;
            }
            _ => return true,
        };
        pos = pos.saturating_add(skip);
    }
    true
}

/// Skip a short string at `pos`.
fn short(args: &[u8], pos: usize) -> Option<usize> {
    Some(pos + 1 + *args.get(pos)? as usize)
}

/// Whether the field table among a method's arguments (`args`: the payload
/// after class and method ids) nests at most `MAX_DEPTH`; true for methods
/// without one.
pub fn method_ok(class_id: u16, method_id: u16, args: &[u8]) -> bool {
    // Offset of the table: reserved short (2), short strings, a bit octet.
    let offset = match (class_id, method_id) {
        // connection.start (octet, octet, server-properties): clients have
        // no business sending it, but it is parsed before it is refused.
        (10, 10) => Some(2),
        // connection.start-ok: client-properties first.
        (10, 11) => Some(0),
        // exchange.declare: exchange, type, bits.
        (40, 10) => short(args, 2).and_then(|p| short(args, p)).map(|p| p + 1),
        // exchange.bind / unbind: destination, source, routing key, bits.
        // queue.bind: queue, exchange, routing key, bits.
        (40, 30) | (40, 40) | (50, 20) => short(args, 2)
            .and_then(|p| short(args, p))
            .and_then(|p| short(args, p))
            .map(|p| p + 1),
        // queue.unbind: queue, exchange, routing key, no bits.
        (50, 50) => short(args, 2)
            .and_then(|p| short(args, p))
            .and_then(|p| short(args, p)),
        // queue.declare: queue, bits.
        (50, 10) => short(args, 2).map(|p| p + 1),
        // basic.consume: queue, consumer tag, bits.
        (60, 20) => short(args, 2).and_then(|p| short(args, p)).map(|p| p + 1),
        _ => return true,
    };
    match offset.and_then(|o| args.get(o..)) {
        Some(table) => table_ok(table),
        None => true,
    }
}

/// Whether a content header's `headers` property nests at most `MAX_DEPTH`.
pub fn header_ok(payload: &[u8]) -> bool {
    // class (2), weight (2), body size (8), property flags (2).
    let Some(flags) = payload.get(12..14) else {
        return true;
    };
    let flags = u16::from_be_bytes([flags[0], flags[1]]);
    if flags & 0x2000 == 0 {
        return true;
    }
    let mut pos = Some(14);
    // content-type and content-encoding come first when present.
    for bit in [0x8000u16, 0x4000] {
        if flags & bit != 0 {
            pos = pos.and_then(|p| short(payload, p));
        }
    }
    match pos.and_then(|p| payload.get(p..)) {
        Some(table) => table_ok(table),
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table nesting `depth` levels: tables in tables, or arrays in
    /// arrays inside one table.
    pub fn nested(depth: usize, arrays: bool) -> Vec<u8> {
        let inner = if arrays { b'A' } else { b'F' };
        let mut value = 0u32.to_be_bytes().to_vec();
        for level in 1..depth {
            let outer_is_table = level == depth - 1 || !arrays;
            let mut entry = if outer_is_table {
                vec![1, b'k']
            } else {
                Vec::new()
            };
            entry.push(inner);
            entry.extend_from_slice(&value);
            value = (entry.len() as u32).to_be_bytes().to_vec();
            value.extend(entry);
        }
        value
    }

    #[test]
    fn depth_limit() {
        for arrays in [false, true] {
            assert!(table_ok(&nested(1, arrays)));
            assert!(table_ok(&nested(MAX_DEPTH, arrays)), "{arrays}");
            assert!(!table_ok(&nested(MAX_DEPTH + 1, arrays)), "{arrays}");
            assert!(!table_ok(&nested(20_000, arrays)), "{arrays}");
        }
    }

    #[test]
    fn depth_matches_the_parser() {
        // What we measure is what amq-protocol parses.
        use amq_protocol::types::{parsing::parse_field_table, AMQPValue};
        let t = nested(5, false);
        let (_, mut table) = parse_field_table(&t[..]).expect("parse");
        let mut depth = 1;
        while let Some(AMQPValue::FieldTable(inner)) = table.inner().get("k").cloned() {
            table = inner;
            depth += 1;
        }
        assert_eq!(depth, 5);
    }

    #[test]
    fn scalars_and_strings_are_skipped() {
        let mut entries = Vec::new();
        for (k, v) in [
            (b'a', vec![b't', 1]),
            (b'b', vec![b'l', 0, 0, 0, 0, 0, 0, 0, 9]),
            (b'c', vec![b'S', 0, 0, 0, 3, b'F', b'F', b'F']),
            (b'd', vec![b'D', 2, 0, 0, 0, 7]),
            (b'e', vec![b'V']),
        ] {
            entries.extend_from_slice(&[1, k]);
            entries.extend(v);
        }
        let mut t = (entries.len() as u32).to_be_bytes().to_vec();
        t.extend(entries);
        assert!(table_ok(&t));
    }

    #[test]
    fn malformed_is_left_to_the_parser() {
        assert!(table_ok(&[]));
        assert!(table_ok(&[0, 0, 0, 9, 1]));
        assert!(table_ok(&[0, 0, 0, 3, 1, b'k', b'F']));
        assert!(table_ok(&[0, 0, 0, 3, 1, b'k', b'?']));
    }

    #[test]
    fn tables_are_found_in_methods_and_headers() {
        let deep = nested(MAX_DEPTH + 1, false);
        let ok = nested(2, false);
        // queue.declare: reserved, "q", bits, arguments.
        let declare = |t: &[u8]| [&[0u8, 0, 1, b'q', 0][..], t].concat();
        assert!(method_ok(50, 10, &declare(&ok)));
        assert!(!method_ok(50, 10, &declare(&deep)));
        // queue.unbind has no bits before its arguments.
        let unbind = [&[0u8, 0, 1, b'q', 1, b'x', 0][..], &deep[..]].concat();
        assert!(!method_ok(50, 50, &unbind));
        assert!(!method_ok(10, 11, &deep));
        assert!(method_ok(60, 40, &deep), "basic.publish has no table");
        // A content header with content-type and headers.
        let mut h = vec![0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3, 0xA0, 0, 1, b'x'];
        h.extend(&deep);
        assert!(!header_ok(&h));
        h.truncate(16);
        h.extend(&ok);
        assert!(header_ok(&h));
    }
}
