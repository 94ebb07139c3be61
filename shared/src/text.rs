//! The message as text: its sentences (one splitter for the speech and the
//! captions), the language its script says it is in, and when each
//! sentence is spoken.

use serde::{Deserialize, Serialize};

/// The message cut into sentences: after 。！？!? and line breaks, and
/// after a `.` that ends a word; pieces with nothing to say (only
/// punctuation) join the sentence before them.
pub fn sentences(message: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut cur = String::new();
    let chars: Vec<char> = message.chars().collect();
    for (i, &ch) in chars.iter().enumerate() {
        if ch == '\n' {
            push_sentence(&mut out, &mut cur);
            continue;
        }
        cur.push(ch);
        let next = chars.get(i + 1).copied();
        let ends = matches!(ch, '。' | '！' | '？' | '!' | '?')
            && !matches!(next, Some('!' | '?' | '！' | '？' | '」' | '』'))
            || (ch == '.' && next.is_none_or(char::is_whitespace));
        if ends {
            push_sentence(&mut out, &mut cur);
        }
    }
    push_sentence(&mut out, &mut cur);
    out
}

fn push_sentence(out: &mut Vec<String>, cur: &mut String) {
    let t = cur.trim();
    if !t.is_empty() {
        match out.last_mut() {
            Some(prev) if !t.chars().any(char::is_alphanumeric) => prev.push_str(t),
            _ => out.push(t.to_owned()),
        }
    }
    cur.clear();
}

/// Kana (hiragana, katakana and their half-width and extension forms) or
/// a CJK ideograph: a character only a Japanese voice can read.
pub fn is_japanese(c: char) -> bool {
    matches!(c,
        '\u{3040}'..='\u{309F}' | '\u{30A0}'..='\u{30FF}' | '\u{31F0}'..='\u{31FF}' | '\u{FF66}'..='\u{FF9D}'
        | '\u{3400}'..='\u{4DBF}' | '\u{4E00}'..='\u{9FFF}' | '\u{F900}'..='\u{FAFF}' | '\u{3005}')
}

/// The language a message's script says it is in: `ja` when it has any
/// kana or kanji (a Japanese message may hold a name in Latin letters,
/// digits and emoji: a Japanese voice reads those), `en` when it has Latin
/// letters and none of those, `None` when it has neither (only digits,
/// symbols or emoji: any voice will do).
pub fn language(message: &str) -> Option<&'static str> {
    if message.chars().any(is_japanese) {
        Some("ja")
    } else if message.chars().any(|c| c.is_alphabetic() && (c.is_ascii() || ('\u{00C0}'..='\u{024F}').contains(&c))) {
        Some("en")
    } else {
        None
    }
}

/// The name of a language code, for messages.
pub fn language_name(code: &str) -> &str {
    match code {
        "ja" => "Japanese",
        "en" => "English",
        other => other,
    }
}

/// When each sentence is spoken in the final speech (seconds from its
/// start, after the joins and the profile's tempo change), as the speech
/// step measured it; the render times the captions by it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpeechTiming {
    pub sentences: Vec<SentenceTime>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SentenceTime {
    pub text: String,
    pub start: f64,
    pub end: f64,
}

impl SpeechTiming {
    /// The same sentences with every time divided by `tempo` (speech sped
    /// up by that factor).
    pub fn at_tempo(&self, tempo: f64) -> SpeechTiming {
        let t = if tempo > 0.0 { tempo } else { 1.0 };
        SpeechTiming {
            sentences: self
                .sentences
                .iter()
                .map(|s| SentenceTime { text: s.text.clone(), start: s.start / t, end: s.end / t })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_split_into_sentences() {
        assert_eq!(
            sentences("おめでとう！！いつもありがとう。\nまたね"),
            vec!["おめでとう！！", "いつもありがとう。", "またね"]
        );
        assert_eq!(sentences("Hi Dr. Who. It's 3.5 m long! Bye"), vec!["Hi Dr.", "Who.", "It's 3.5 m long!", "Bye"]);
        assert_eq!(sentences("Wow. ... !"), vec!["Wow....!"]);
        assert!(sentences("  \n ").is_empty());
    }

    #[test]
    fn the_script_tells_the_language() {
        assert_eq!(language("お誕生日おめでとうございます。"), Some("ja"));
        assert_eq!(language("Tomさん、3歳のお誕生日おめでとう🎉"), Some("ja"));
        assert_eq!(language("ｶﾀｶﾅ"), Some("ja"));
        assert_eq!(language("Happy birthday, Zoë!"), Some("en"));
        assert_eq!(language("It’s lovely — isn’t it?"), Some("en"));
        assert_eq!(language("2026 🎉 !!"), None);
        // Cyrillic is neither: no voice reads it, and no language is claimed.
        assert_eq!(language("Привет"), None);
    }

    #[test]
    fn a_faster_tempo_brings_every_time_forward() {
        let t = SpeechTiming { sentences: vec![SentenceTime { text: "a".into(), start: 1.0, end: 3.0 }] };
        assert_eq!(t.at_tempo(2.0).sentences[0], SentenceTime { text: "a".into(), start: 0.5, end: 1.5 });
    }
}
