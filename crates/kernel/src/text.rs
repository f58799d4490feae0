//! Text a client sends: names, descriptions, reasons, keys. One type, [`Text`], holds every such
//! value; what a field accepts is declared once by its [`TextKind`]: which characters, how many,
//! whether it may be empty. A `Text` that exists is valid, so every store can hold it (no NUL,
//! which PostgreSQL refuses in `text` and `jsonb`) and every page can show it (no control
//! characters, except line breaks and tabs where several lines make sense).
//!
//! The same rules travel to the edge: a `Text` deserializes only from valid text (serde names
//! the field in the error), and, with the `openapi` feature, describes itself to API documents
//! with the same limits and a pattern for its characters.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::marker::PhantomData;

/// Which characters a kind of text may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chars {
    /// One line: any character but the control characters (U+0000 to U+001F, U+007F to
    /// U+009F) and the Unicode line and paragraph separators.
    Line,
    /// Several lines: the same, but line feeds, carriage returns and tabs are allowed.
    Lines,
    /// Visible ASCII, `!` to `~`: letters, digits and punctuation; no spaces.
    VisibleAscii,
}

impl Chars {
    pub fn allows(self, c: char) -> bool {
        match self {
            Chars::Line => !c.is_control() && !matches!(c, '\u{2028}' | '\u{2029}'),
            Chars::Lines => !c.is_control() || matches!(c, '\n' | '\r' | '\t'),
            Chars::VisibleAscii => c.is_ascii_graphic(),
        }
    }

    /// The same rule as a regular expression (ECMA-262 and Python agree on it), for API
    /// documents.
    pub fn pattern(self) -> &'static str {
        match self {
            Chars::Line => r"^[^\u0000-\u001F\u007F-\u009F\u2028\u2029]*$",
            Chars::Lines => r"^[^\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]*$",
            Chars::VisibleAscii => "^[!-~]*$",
        }
    }

    /// The rule in words, for error messages.
    pub fn describe(self) -> &'static str {
        match self {
            Chars::Line => "one line of text without control characters",
            Chars::Lines => "text whose only control characters are line breaks and tabs",
            Chars::VisibleAscii => "visible ASCII only: letters, digits and punctuation, no spaces",
        }
    }
}

/// What one field of text accepts. Implemented by a unit type per field (`ProductNameText`, ...).
pub trait TextKind: 'static {
    /// What the text is, as error messages call it: "a product name".
    const WHAT: &'static str;
    /// The name of its schema in API documents: "ProductName".
    const SCHEMA_NAME: &'static str;
    /// The most characters (Unicode scalar values) it may have, counted as sent.
    const MAX_CHARS: usize;
    const CHARS: Chars;
    /// Whether it may be empty once surrounding whitespace is trimmed.
    const MAY_BE_EMPTY: bool = false;
}

/// Why a text was refused. The messages say what the field accepts; the caller adds which field
/// it was.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    #[error("{what} is at most {max} characters (got {got})")]
    TooLong { what: &'static str, max: usize, got: usize },
    #[error("{what} must not be empty")]
    Empty { what: &'static str },
    #[error("{what} must not contain U+{code:04X} (character {position}): it is {rule}", code = u32::from(*found))]
    ForbiddenCharacter { what: &'static str, found: char, position: usize, rule: &'static str },
}

/// Text of kind `K`: checked, with surrounding whitespace trimmed.
pub struct Text<K: TextKind> {
    text: String,
    kind: PhantomData<fn() -> K>,
}

impl<K: TextKind> Text<K> {
    /// The text, trimmed, if `K` accepts it. Its length is counted before trimming, so that the
    /// limit is the one a client can check against what it sends.
    pub fn new(text: impl Into<String>) -> Result<Self, TextError> {
        let text = text.into();
        let chars = text.chars().count();
        if chars > K::MAX_CHARS {
            return Err(TextError::TooLong { what: K::WHAT, max: K::MAX_CHARS, got: chars });
        }
        if let Some((index, found)) = text.chars().enumerate().find(|(_, c)| !K::CHARS.allows(*c)) {
            return Err(TextError::ForbiddenCharacter {
                what: K::WHAT,
                found,
                position: index + 1,
                rule: K::CHARS.describe(),
            });
        }
        let trimmed = text.trim();
        if trimmed.is_empty() && !K::MAY_BE_EMPTY {
            return Err(TextError::Empty { what: K::WHAT });
        }
        let text = if trimmed.len() == text.len() { text } else { trimmed.to_owned() };
        Ok(Self { text, kind: PhantomData })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn into_string(self) -> String {
        self.text
    }

    pub fn is_empty(&self) -> bool {
        self.text.is_empty()
    }
}

impl<K: TextKind> Clone for Text<K> {
    fn clone(&self) -> Self {
        Self { text: self.text.clone(), kind: PhantomData }
    }
}

impl<K: TextKind> PartialEq for Text<K> {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl<K: TextKind> Eq for Text<K> {}

impl<K: TextKind> Hash for Text<K> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.text.hash(state);
    }
}

impl<K: TextKind> fmt::Debug for Text<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.text, f)
    }
}

impl<K: TextKind> fmt::Display for Text<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl<K: TextKind> TryFrom<String> for Text<K> {
    type Error = TextError;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        Self::new(text)
    }
}

impl<'de, K: TextKind> serde::Deserialize<'de> for Text<K> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::new(text).map_err(serde::de::Error::custom)
    }
}

impl<K: TextKind> serde::Serialize for Text<K> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Name;
    impl TextKind for Name {
        const WHAT: &'static str = "a name";
        const SCHEMA_NAME: &'static str = "Name";
        const MAX_CHARS: usize = 5;
        const CHARS: Chars = Chars::Line;
    }

    struct Note;
    impl TextKind for Note {
        const WHAT: &'static str = "a note";
        const SCHEMA_NAME: &'static str = "Note";
        const MAX_CHARS: usize = 20;
        const CHARS: Chars = Chars::Lines;
        const MAY_BE_EMPTY: bool = true;
    }

    struct Key;
    impl TextKind for Key {
        const WHAT: &'static str = "a key";
        const SCHEMA_NAME: &'static str = "Key";
        const MAX_CHARS: usize = 8;
        const CHARS: Chars = Chars::VisibleAscii;
    }

    #[test]
    fn text_is_trimmed_and_its_length_counted_in_characters_as_sent() {
        assert_eq!(Text::<Name>::new("  Jo ").unwrap().as_str(), "Jo");
        assert_eq!(Text::<Name>::new("Ærøé").unwrap().as_str(), "Ærøé", "characters, not bytes");
        assert_eq!(Text::<Name>::new("abcdef"), Err(TextError::TooLong { what: "a name", max: 5, got: 6 }));
        assert!(Text::<Name>::new(" abc  ").is_err(), "spaces count: the limit is on what was sent");
    }

    #[test]
    fn empty_text_is_refused_unless_the_kind_allows_it() {
        assert_eq!(Text::<Name>::new("   "), Err(TextError::Empty { what: "a name" }));
        assert_eq!(Text::<Note>::new(" \n ").unwrap().as_str(), "");
    }

    #[test]
    fn nul_and_control_characters_are_refused_with_their_position() {
        let error = Text::<Name>::new("a\0b").unwrap_err();
        assert!(matches!(error, TextError::ForbiddenCharacter { found: '\0', position: 2, .. }), "{error:?}");
        assert_eq!(
            error.to_string(),
            "a name must not contain U+0000 (character 2): it is one line of text without control characters"
        );
        for refused in ["a\nb", "a\tb", "\u{7f}", "\u{85}", "a\u{2028}b", "\u{1b}[31m"] {
            assert!(Text::<Name>::new(refused).is_err(), "{refused:?} in one line");
        }
        assert!(Text::<Note>::new("two\r\nlines\tand a tab").is_ok());
        for refused in ["\0", "\u{7}", "\u{1b}", "\u{9f}", "\u{b}"] {
            assert!(Text::<Note>::new(refused).is_err(), "{refused:?} in several lines");
        }
    }

    #[test]
    fn visible_ascii_refuses_spaces_and_anything_beyond_ascii() {
        assert!(Text::<Key>::new("a-1_B.~").is_ok());
        for refused in ["a b", "é", "a\u{0}", "", "\u{7f}"] {
            assert!(Text::<Key>::new(refused).is_err(), "{refused:?}");
        }
    }

    #[test]
    fn the_pattern_of_each_rule_matches_exactly_the_characters_it_allows() {
        for chars in [Chars::Line, Chars::Lines, Chars::VisibleAscii] {
            let pattern = regex::Regex::new(chars.pattern()).unwrap();
            for c in ('\0'..='\u{3000}').chain(['\u{FEFF}', '\u{FFFF}', '\u{10FFFF}']) {
                let text = format!("a{c}b");
                assert_eq!(pattern.is_match(&text), chars.allows(c), "{chars:?} and U+{:04X}", u32::from(c));
            }
        }
    }

    #[test]
    fn text_deserializes_only_when_valid_and_the_error_says_why() {
        let ok: Text<Name> = serde_json::from_str(r#"" Jo ""#).unwrap();
        assert_eq!(ok.as_str(), "Jo");
        let error = serde_json::from_str::<Text<Name>>(r#""a\u0000""#).unwrap_err().to_string();
        assert!(error.starts_with("a name must not contain U+0000"), "{error}");
        assert_eq!(serde_json::to_string(&ok).unwrap(), r#""Jo""#);
    }
}
