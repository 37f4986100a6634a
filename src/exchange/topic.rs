//! Topic matching with RabbitMQ's rules: words are separated by '.', `*` is
//! exactly one word, `#` is zero or more words. An empty key has zero words
//! (so `#` matches it and `*` does not); empty words between dots count.

fn words(s: &str) -> Vec<&str> {
    if s.is_empty() {
        Vec::new()
    } else {
        s.split('.').collect()
    }
}

/// Whether binding `pattern` matches `routing_key`.
pub fn matches(pattern: &str, routing_key: &str) -> bool {
    let p = words(pattern);
    let k = words(routing_key);
    // dp[j] = pattern prefix p[..i] matches key prefix k[..j]; i advances per row.
    let mut dp = vec![false; k.len() + 1];
    dp[0] = true;
    for word in &p {
        let mut next = vec![false; k.len() + 1];
        if *word == "#" {
            // '#' consumes zero words (dp[j]) or one more word (next[j-1]).
            for j in 0..=k.len() {
                next[j] = dp[j] || (j > 0 && next[j - 1]);
            }
        } else {
            for j in 1..=k.len() {
                next[j] = dp[j - 1] && (*word == "*" || *word == k[j - 1]);
            }
        }
        dp = next;
    }
    dp[k.len()]
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn rabbitmq_cases() {
        let yes = [
            ("a.b.c", "a.b.c"),
            ("a.*.c", "a.b.c"),
            ("#", ""),
            ("#", "a.b"),
            ("a.#", "a"),
            ("a.#", "a.b.c"),
            ("#.a", "a"),
            ("a.#.b", "a.b"),
            ("a.#.b", "a.x.y.b"),
            ("*.*", "a.b"),
            ("a..b", "a..b"),
            ("a.*.b", "a..b"),
            ("#.#", ""),
            ("", ""),
        ];
        for (p, k) in yes {
            assert!(matches(p, k), "{p} should match {k:?}");
        }
        let no = [
            ("a.*", "a"),
            ("a.*", "a.b.c"),
            ("a.b", "a.b.c"),
            ("*", "a.b"),
            ("", "a"),
            ("a.#.c", "a.b"),
            ("a", "ab"),
            ("*", ""),
        ];
        for (p, k) in no {
            assert!(!matches(p, k), "{p} should not match {k:?}");
        }
    }
}
