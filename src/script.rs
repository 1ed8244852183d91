//! Traditional Chinese read as simplified: the models' vocabularies and word
//! lists are simplified Chinese, so a unit's key (see [`crate::units::Unit::key`])
//! maps a traditional character to its simplified form. Only keys change; the
//! output keeps the original characters.
//!
//! The table, `src/t2s_table.txt`, is OpenCC's character table
//! (Apache-2.0), one `TRAD SIMP` pair a line, built by `scripts/fetch_t2s.py`,
//! which also documents which characters it leaves out because simplified text
//! uses them.

use std::collections::HashMap;
use std::sync::OnceLock;

const TABLE: &str = include_str!("t2s_table.txt");

fn table() -> &'static HashMap<char, char> {
    static MAP: OnceLock<HashMap<char, char>> = OnceLock::new();
    MAP.get_or_init(|| {
        TABLE
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| {
                let mut cs = l.chars();
                match (cs.next(), cs.next(), cs.next(), cs.next()) {
                    (Some(t), Some(' '), Some(s), None) => (t, s),
                    _ => panic!("src/t2s_table.txt: bad line {l:?}"),
                }
            })
            .collect()
    })
}

/// The simplified form of a traditional character; any other character as is.
pub fn to_simplified(c: char) -> char {
    if c.is_ascii() {
        return c;
    }
    table().get(&c).copied().unwrap_or(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traditional_maps_and_simplified_stays() {
        let s: String = "這個電腦軟體的開發者".chars().map(to_simplified).collect();
        assert_eq!(s, "这个电脑软体的开发者");
        for c in "这个电脑软件的开发者，乾隆手塚1a".chars() {
            assert_eq!(to_simplified(c), c);
        }
    }

    #[test]
    fn traditional_and_simplified_sentences_share_keys() {
        use crate::units::{split_units, Unit};
        let keys = |t: &str| -> Vec<String> { split_units(t).iter().map(Unit::key).collect() };
        assert_eq!(keys("這個電腦軟體的開發者"), keys("这个电脑软体的开发者"));
        assert_eq!(
            keys("我們開發了這個電腦程式，１９９８年"),
            keys("我们开发了这个电脑程式,0年")
        );
    }

    #[test]
    fn table_is_one_step() {
        // No simplified form is itself mapped: one lookup is enough.
        for &s in table().values() {
            assert_eq!(to_simplified(s), s);
        }
        assert!(table().len() > 4000);
    }
}
