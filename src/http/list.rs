//! List queries as RabbitMQ's management API takes them: `sort` (a dotted
//! key; empty leaves the order alone) and `sort_reverse`, `columns=a,b.c`, and
//! `page`/`page_size` (max 500), which wrap the answer in RabbitMQ's page
//! object, with `name` (with `use_regex=true` a regular expression, else a
//! substring) filtering the pages (RabbitMQ 3.10 ignores `name` without
//! `page`, and so does this). Without `page` the whole list comes back: no
//! silent cap.

use serde_json::{json, Map, Value};
use std::collections::HashMap;

use super::reply::ApiError;
use axum::http::StatusCode;

const MAX_PAGE_SIZE: usize = 500;

/// Apply the query to a list and build the answer.
pub fn answer(items: Vec<Value>, q: &HashMap<String, String>) -> Result<Value, ApiError> {
    let total = items.len();
    answer_counted(items, total, q)
}

/// `answer` for a list already narrowed by `name_matcher`, out of `total`.
pub fn answer_counted(
    items: Vec<Value>,
    total: usize,
    q: &HashMap<String, String>,
) -> Result<Value, ApiError> {
    let paged = q.contains_key("page") || q.contains_key("page_size");
    let mut items = if paged { filter(items, q)? } else { items };
    sort(&mut items, q);
    let columns = q
        .get("columns")
        .filter(|c| !c.is_empty())
        .map(|c| c.split(',').map(str::to_string).collect::<Vec<_>>());
    let project = |v: Vec<Value>| -> Vec<Value> {
        match &columns {
            Some(cols) => v.into_iter().map(|item| pick(&item, cols)).collect(),
            None => v,
        }
    };
    if !paged {
        return Ok(Value::Array(project(items)));
    }
    let page = parse_positive(q.get("page"), 1, "page")?;
    let page_size = parse_positive(q.get("page_size"), 100, "page_size")?;
    if page_size > MAX_PAGE_SIZE {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_pagination_parameters",
            format!("Invalid pagination parameters: page number {page}, page size {page_size}"),
        ));
    }
    let filtered = items.len();
    let page_count = filtered.div_ceil(page_size).max(1);
    if page > page_count {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "page_out_of_range",
            format!("Page out of range, page: {page} page size: {page_size}, len: {filtered}"),
        ));
    }
    let start = (page - 1) * page_size;
    let chunk: Vec<Value> = items.into_iter().skip(start).take(page_size).collect();
    Ok(json!({
        "filtered_count": filtered,
        "item_count": chunk.len(),
        "items": project(chunk),
        "page": page,
        "page_count": page_count,
        "page_size": page_size,
        "total_count": total,
    }))
}

fn parse_positive(v: Option<&String>, default: usize, what: &str) -> Result<usize, ApiError> {
    match v {
        None => Ok(default),
        Some(s) => match s.trim().parse::<usize>() {
            Ok(n) if n >= 1 => Ok(n),
            _ => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_pagination_parameters",
                format!("Invalid pagination parameters: {what} {s}"),
            )),
        },
    }
}

/// A test on object names.
pub type NameMatcher = Box<dyn Fn(&str) -> bool>;

/// The `name` filter of a paged query, if any: callers with many objects
/// can skip building JSON for names it rejects (`answer` filters again).
pub fn name_matcher(q: &HashMap<String, String>) -> Option<NameMatcher> {
    if !(q.contains_key("page") || q.contains_key("page_size")) {
        return None;
    }
    let name = q.get("name").filter(|n| !n.is_empty())?;
    if q.get("use_regex").is_some_and(|v| v == "true") {
        // RabbitMQ (3.10, checked) ignores a pattern that does not compile.
        let re = regex::RegexBuilder::new(name)
            .size_limit(1 << 20)
            .build()
            .ok()?;
        Some(Box::new(move |s| re.is_match(s)))
    } else {
        let needle = name.to_lowercase();
        Some(Box::new(move |s| s.to_lowercase().contains(&needle)))
    }
}

fn filter(items: Vec<Value>, q: &HashMap<String, String>) -> Result<Vec<Value>, ApiError> {
    let Some(matcher) = name_matcher(q) else {
        return Ok(items);
    };
    Ok(items
        .into_iter()
        .filter(|v| v.get("name").and_then(Value::as_str).is_some_and(&matcher))
        .collect())
}

fn lookup<'a>(v: &'a Value, dotted: &str) -> Option<&'a Value> {
    dotted.split('.').try_fold(v, |v, k| v.get(k))
}

fn sort(items: &mut [Value], q: &HashMap<String, String>) {
    let Some(key) = q.get("sort").filter(|k| !k.is_empty()) else {
        return;
    };
    let reverse = q.get("sort_reverse").is_some_and(|v| v == "true");
    items.sort_by(|a, b| {
        let o = compare(lookup(a, key), lookup(b, key));
        if reverse {
            o.reverse()
        } else {
            o
        }
    });
}

fn compare(a: Option<&Value>, b: Option<&Value>) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    match (a, b) {
        (Some(Value::Number(x)), Some(Value::Number(y))) => x
            .as_f64()
            .partial_cmp(&y.as_f64())
            .unwrap_or(Ordering::Equal),
        (Some(Value::String(x)), Some(Value::String(y))) => x.cmp(y),
        (Some(Value::Bool(x)), Some(Value::Bool(y))) => x.cmp(y),
        (None, Some(_)) => Ordering::Less,
        (Some(_), None) => Ordering::Greater,
        _ => Ordering::Equal,
    }
}

/// Keep only `columns` (dotted paths) of an item, nesting as in the original.
fn pick(item: &Value, columns: &[String]) -> Value {
    let mut out = Map::new();
    for c in columns {
        let Some(v) = lookup(item, c) else { continue };
        let parts = c.split('.').collect::<Vec<_>>();
        put(&mut out, &parts, v.clone());
    }
    Value::Object(out)
}

/// Insert `v` at the dotted path `parts` under `m`, making objects on the way.
fn put(m: &mut Map<String, Value>, parts: &[&str], v: Value) {
    match parts {
        [] => {}
        [last] => {
            m.insert(last.to_string(), v);
        }
        [first, rest @ ..] => {
            let entry = m
                .entry(first.to_string())
                .or_insert_with(|| Value::Object(Map::new()));
            if !entry.is_object() {
                *entry = Value::Object(Map::new());
            }
            if let Value::Object(inner) = entry {
                put(inner, rest, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn items() -> Vec<Value> {
        (0..7)
            .map(|i| json!({"name": format!("q{i}"), "messages": 10 - i, "x": {"y": i}}))
            .collect()
    }

    #[test]
    fn whole_list_without_page() {
        let v = answer(items(), &q(&[])).unwrap();
        assert_eq!(v.as_array().unwrap().len(), 7);
    }

    #[test]
    fn pages_sort_filter_columns() {
        let v = answer(
            items(),
            &q(&[("page", "2"), ("page_size", "3"), ("sort", "messages")]),
        )
        .unwrap();
        assert_eq!(v["total_count"], 7);
        assert_eq!(v["page_count"], 3);
        assert_eq!(v["item_count"], 3);
        assert_eq!(v["items"][0]["name"], "q3");
        let v = answer(
            items(),
            &q(&[("name", "^q[12]$"), ("use_regex", "true"), ("page", "1")]),
        )
        .unwrap();
        assert_eq!(v["filtered_count"], 2);
        let v = answer(items(), &q(&[("name", "q1")])).unwrap();
        assert_eq!(
            v.as_array().unwrap().len(),
            7,
            "name filters pages only, as in RabbitMQ"
        );
        let v = answer(
            items(),
            &q(&[
                ("columns", "name,x.y"),
                ("sort", "x.y"),
                ("sort_reverse", "true"),
            ]),
        )
        .unwrap();
        assert_eq!(v[0], json!({"name": "q6", "x": {"y": 6}}));
        assert!(answer(items(), &q(&[("page", "9")])).is_err());
        assert!(answer(items(), &q(&[("page", "0")])).is_err());
        assert!(answer(items(), &q(&[("page", "1"), ("page_size", "501")])).is_err());
        let all = answer(
            items(),
            &q(&[("name", "("), ("use_regex", "true"), ("page", "1")]),
        )
        .unwrap();
        assert_eq!(
            all["filtered_count"], 7,
            "an invalid pattern filters nothing"
        );
    }
}
