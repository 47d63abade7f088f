//! Repository names as sorted sets, asked by range (a lookup is O(log N), a
//! listing O(N)): nothing is copied or rebuilt per lookup. And the scan of a
//! few catalog pages that tells whether one path is there without reading
//! the whole catalog (a registry of 10,000 repositories takes seconds to walk).

use std::collections::BTreeSet;
use std::ops::Bound;

/// What the names say about one path.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Family {
    /// The path itself is a name.
    pub exact: bool,
    /// Some name lies below it (`path/…`): it is a namespace.
    pub below: bool,
}

impl Family {
    pub fn any(self) -> bool {
        self.exact || self.below
    }

    /// The union with what another source says.
    pub fn add(&mut self, other: Family) {
        self.exact |= other.exact;
        self.below |= other.below;
    }
}

/// `path` in a set sorted by string order.
pub fn family_in_set(names: &BTreeSet<String>, path: &str) -> Family {
    let prefix = format!("{path}/");
    Family {
        exact: names.contains(path),
        below: names
            .range::<str, _>((Bound::Included(prefix.as_str()), Bound::Unbounded))
            .next()
            .is_some_and(|n| n.starts_with(&prefix)),
    }
}

/// `path` in a slice sorted by string order (the cached catalog).
pub fn family_in_sorted(names: &[String], path: &str) -> Family {
    let prefix = format!("{path}/");
    let at = names.partition_point(|n| n.as_str() < path);
    let below_at = names.partition_point(|n| n.as_str() < prefix.as_str());
    Family {
        exact: names.get(at).is_some_and(|n| n == path),
        below: names.get(below_at).is_some_and(|n| n.starts_with(&prefix)),
    }
}

/// The union over several sources.
pub fn family_in_all<'a>(sets: impl IntoIterator<Item = &'a BTreeSet<String>>, path: &str) -> Family {
    let mut f = Family::default();
    for s in sets {
        f.add(family_in_set(s, path));
    }
    f
}

/// First path components of `names` below `prefix` (`""` for the root,
/// else `"a/b/"`), added to `out` (sorted, deduplicated by the set).
pub fn children_in_set<'a>(names: &'a BTreeSet<String>, prefix: &str, out: &mut BTreeSet<&'a str>) {
    let range = names.range::<str, _>((Bound::Included(prefix), Bound::Unbounded));
    for n in range.take_while(|n| n.starts_with(prefix)) {
        if let Some(c) = n[prefix.len()..].split('/').next().filter(|c| !c.is_empty()) {
            out.insert(c);
        }
    }
}

/// As `children_in_set`, for a slice sorted by string order.
pub fn children_in_sorted<'a>(names: &'a [String], prefix: &str, out: &mut BTreeSet<&'a str>) {
    let from = names.partition_point(|n| n.as_str() < prefix);
    for n in names[from..].iter().take_while(|n| n.starts_with(prefix)) {
        if let Some(c) = n[prefix.len()..].split('/').next().filter(|c| !c.is_empty()) {
            out.insert(c);
        }
    }
}

/// Where a scan of the catalog for `path` starts: the names after this one
/// (`?last=`), a proper prefix of `path`, so `path` itself is included.
pub fn scan_start(path: &str) -> &str {
    let mut end = path.len().saturating_sub(1);
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    &path[..end]
}

/// The answer so far of a scan of catalog pages for one path.
#[derive(Debug, PartialEq, Eq)]
pub enum Scan {
    /// Every name that could be `path` or below it has been seen.
    Done(Family),
    /// Read the next page (if there is none, the answer is `Done` with what was seen).
    More(Family),
    /// The registry did not start after `last` (it ignores the parameter):
    /// the pages say nothing about `path`; read the whole catalog instead.
    CannotTell,
}

/// Feed one page of a catalog scan that started after `scan_start(path)`.
///
/// Registries order the catalog either by string (`a-b` < `a/b`) or by path,
/// component by component (distribution: `a/b` < `a-b`, as if `/` sorted
/// first). The scan is over only when a name lies past `path`'s family in
/// *both* orders; until then it reads on (bounded by the caller).
pub fn scan_page(path: &str, names: &[String], mut seen: Family) -> Scan {
    let last = scan_start(path);
    let prefix = format!("{path}/");
    for n in names {
        if n == path {
            seen.exact = true;
        } else if n.starts_with(&prefix) {
            seen.below = true;
        } else if n.as_str() <= last && path_cmp(n, last).is_le() {
            return Scan::CannotTell;
        } else if n.as_str() > prefix.as_str() && path_cmp(n, path).is_gt() {
            return Scan::Done(seen);
        }
    }
    Scan::More(seen)
}

/// Order by path components (`/` before every other byte).
fn path_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    let key = |s: &str| s.bytes().map(|c| if c == b'/' { 0 } else { c }).collect::<Vec<u8>>();
    key(a).cmp(&key(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn v(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn family_by_range_in_sets_and_slices() {
        let s = set(&["a", "a-b", "a/b", "a/c/d", "ab", "b"]);
        let sorted: Vec<String> = s.iter().cloned().collect();
        for (path, exact, below) in [
            ("a", true, true),
            ("a/c", false, true),
            ("a/c/d", true, false),
            ("a-", false, false),
            ("ab", true, false),
            ("c", false, false),
            ("", false, false),
        ] {
            let want = Family { exact, below };
            assert_eq!(family_in_set(&s, path), want, "{path}");
            assert_eq!(family_in_sorted(&sorted, path), want, "{path}");
        }
        let other = set(&["x/y"]);
        assert_eq!(
            family_in_all([&s, &other], "x"),
            Family {
                exact: false,
                below: true
            }
        );
    }

    #[test]
    fn children_are_first_components_deduplicated() {
        let s = set(&["a", "a-b", "a/b", "a/b/c", "a/d", "b/e"]);
        let sorted: Vec<String> = s.iter().cloned().collect();
        let mut out = BTreeSet::new();
        children_in_set(&s, "", &mut out);
        assert_eq!(out.into_iter().collect::<Vec<_>>(), ["a", "a-b", "b"]);
        let mut out = BTreeSet::new();
        children_in_sorted(&sorted, "a/", &mut out);
        assert_eq!(out.into_iter().collect::<Vec<_>>(), ["b", "d"]);
        let mut out = BTreeSet::new();
        children_in_sorted(&sorted, "", &mut out);
        assert_eq!(out.into_iter().collect::<Vec<_>>(), ["a", "a-b", "b"]);
    }

    #[test]
    fn scan_starts_before_the_path() {
        assert_eq!(scan_start("abc"), "ab");
        assert_eq!(scan_start("a"), "");
        assert_eq!(scan_start(""), "");
    }

    #[test]
    fn scan_in_string_order() {
        // After "scal": every name > "scal" in string order.
        let page = v(&["scale", "scale-x", "scale/a", "scale/b", "scalf", "zz"]);
        assert_eq!(
            scan_page("scale", &page, Family::default()),
            Scan::Done(Family {
                exact: true,
                below: true
            })
        );
        // The family not reached yet: read on.
        let page = v(&["scale-1", "scale-2"]);
        assert_eq!(
            scan_page("scale", &page, Family::default()),
            Scan::More(Family::default())
        );
        // Past it without seeing it: not there.
        let page = v(&["scale-1", "scale0"]);
        assert_eq!(
            scan_page("scale", &page, Family::default()),
            Scan::Done(Family::default())
        );
    }

    #[test]
    fn scan_in_path_order() {
        // distribution: "scale/a" before "scale-x"; "scale-x" is not past the family in string order.
        let page = v(&["scal/x", "scale", "scale/a", "scale-x", "scale.y", "scalf"]);
        assert_eq!(
            scan_page("scale", &page, Family::default()),
            Scan::Done(Family {
                exact: true,
                below: true
            })
        );
        let page = v(&["scale-x"]);
        let seen = Family {
            exact: false,
            below: true,
        };
        assert_eq!(scan_page("scale", &page, seen), Scan::More(seen));
    }

    #[test]
    fn a_registry_ignoring_last_cannot_tell() {
        let page = v(&["aaa", "scale/a"]);
        assert_eq!(scan_page("scale", &page, Family::default()), Scan::CannotTell);
    }
}
