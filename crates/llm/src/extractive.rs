//! The offline last resort: the abstract's most informative sentences.
//! Deterministic, free, always available; marked `extractive` so readers
//! and metrics can tell it from a model's summary.

use std::collections::HashMap;

use crate::{LlmError, Summarizer, Summary, SummaryRequest};

#[derive(Debug, Clone, Copy)]
pub struct Extractive {
    /// Sentences to keep.
    pub sentences: usize,
}

impl Default for Extractive {
    fn default() -> Self {
        Self { sentences: 2 }
    }
}

const STOPWORDS: [&str; 40] = [
    "a", "an", "the", "and", "or", "of", "to", "in", "on", "for", "with", "by", "we", "our", "is",
    "are", "be", "this", "that", "these", "it", "its", "as", "at", "from", "which", "can", "has",
    "have", "was", "were", "not", "also", "their", "such", "than", "into", "both", "using", "use",
];

impl Summarizer for Extractive {
    fn name(&self) -> &'static str {
        "extractive"
    }

    async fn summarize(&self, request: &SummaryRequest) -> Result<Summary, LlmError> {
        let text = summarize(&request.abstract_text, self.sentences);
        if text.is_empty() {
            return Err(LlmError::Empty);
        }
        Ok(Summary {
            text,
            provider: "extractive".into(),
            model: "frequency-v1".into(),
            input_tokens: 0,
            output_tokens: 0,
            cost_micro_usd: 0,
            extractive: true,
        })
    }
}

/// The `keep` sentences whose words are most frequent in the text, in
/// their original order.
pub fn summarize(text: &str, keep: usize) -> String {
    let sentences = split_sentences(text);
    if sentences.len() <= keep {
        return sentences.join(" ");
    }
    let words = |s: &str| -> Vec<String> {
        s.split(|c: char| !c.is_alphanumeric())
            .map(str::to_lowercase)
            .filter(|w| w.len() > 2 && !STOPWORDS.contains(&w.as_str()))
            .collect()
    };
    let mut frequency: HashMap<String, usize> = HashMap::new();
    for word in sentences.iter().flat_map(|s| words(s)) {
        *frequency.entry(word).or_default() += 1;
    }
    let mut scored: Vec<(usize, f64)> = sentences
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let w = words(s);
            let total: usize = w
                .iter()
                .map(|w| frequency.get(w).copied().unwrap_or(0))
                .sum();
            // Long sentences win on total alone; normalize, and favour the
            // opening, where abstracts state their point.
            let score =
                total as f64 / (w.len().max(1) as f64).sqrt() + if i == 0 { 0.5 } else { 0.0 };
            (i, score)
        })
        .collect();
    scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut chosen: Vec<usize> = scored.iter().take(keep).map(|(i, _)| *i).collect();
    chosen.sort_unstable();
    chosen
        .iter()
        .map(|i| sentences[*i])
        .collect::<Vec<_>>()
        .join(" ")
}

fn split_sentences(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let bytes = text.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        // A stop ends a sentence when the next word starts with a capital
        // (or a quote), which keeps "e.g. 3.5" and "et al. 2020" whole.
        let ends = matches!(b, b'.' | b'?' | b'!')
            && bytes.get(i + 1).is_none_or(|n| n.is_ascii_whitespace())
            && text[i + 1..]
                .trim_start()
                .chars()
                .next()
                .is_none_or(|c| c.is_uppercase() || c == '"');
        if ends {
            let sentence = text[start..=i].trim();
            if !sentence.is_empty() {
                out.push(sentence);
            }
            start = i + 1;
        }
    }
    let rest = text[start..].trim();
    if !rest.is_empty() {
        out.push(rest);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const ABSTRACT: &str = "What is the funniest number in cryptography? 0. The reason is that for all x, \
        x*0 = 0, i.e., the equation is always satisfied no matter what x is. This article discusses crypto bugs \
        in four BLS signatures' libraries that revolve around 0. Furthermore, we develop \"splitting zero\" \
        attacks to show a weakness in the proof-of-possession aggregate signature scheme.";

    #[test]
    fn picks_sentences_in_order_and_is_deterministic() {
        let first = summarize(ABSTRACT, 2);
        assert_eq!(first, summarize(ABSTRACT, 2));
        let sentences = split_sentences(&first);
        assert_eq!(sentences.len(), 2);
        let positions: Vec<usize> = sentences
            .iter()
            .map(|s| ABSTRACT.find(s).expect("from the text"))
            .collect();
        assert!(positions[0] < positions[1]);
    }

    #[test]
    fn short_texts_are_kept_whole() {
        assert_eq!(summarize("One sentence only.", 2), "One sentence only.");
        assert_eq!(
            summarize("Ünïcödé — ünïcödé. Straße.", 1),
            summarize("Ünïcödé — ünïcödé. Straße.", 1)
        );
        assert_eq!(summarize("", 2), "");
        assert_eq!(
            split_sentences("e.g. 3.5 percent. Done."),
            ["e.g. 3.5 percent.", "Done."]
        );
    }
}
