//! Cutting text that came from outside without splitting a character.

/// The first `max` characters of `s` (all of it when shorter). Revision ids, names and labels
/// come from outside the process, so cutting at a byte offset could panic.
pub fn short(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// The longest prefix of `s` that fits in `max_bytes` bytes, ending on a character boundary.
pub fn fit_bytes(s: &str, max_bytes: usize) -> &str {
    if s.len() <= max_bytes {
        return s;
    }
    let mut end = max_bytes;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn cuts_by_characters() {
        assert_eq!(short("4ddcee9c7340abcdef", 12), "4ddcee9c7340");
        assert_eq!(short("abc", 12), "abc");
        assert_eq!(short("é€😀x", 3), "é€😀");
        assert_eq!(fit_bytes("é€😀x", 4), "é");
        assert_eq!(fit_bytes("abc", 4), "abc");
    }

    proptest! {
        #[test]
        fn never_panics_and_stays_within_bounds(s in ".*", n in 0usize..64) {
            let a = short(&s, n);
            prop_assert!(a.chars().count() <= n);
            prop_assert!(s.starts_with(a));
            let b = fit_bytes(&s, n);
            prop_assert!(b.len() <= n);
            prop_assert!(s.starts_with(b));
        }
    }
}
