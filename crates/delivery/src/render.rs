//! What a delivery says, per channel: an email (text and HTML), a webhook
//! payload, a Slack message. Templates are askama's, checked at compile
//! time; the HTML escapes everything that comes from papers, which are
//! untrusted input.

use askama::Template;
use catalog::reading::Card;
use serde_json::{Value, json};
use time::{Date, OffsetDateTime};

/// Papers to tell one person about: one (instant) or several (a digest).
#[derive(Debug, Clone)]
pub struct Notice<'a> {
    pub cards: &'a [Card],
    /// Names of the subscriptions that matched.
    pub subscriptions: Vec<String>,
    /// The digest's local date; `None` for an instant notice.
    pub date: Option<Date>,
    pub unsubscribe_url: String,
    pub manage_url: String,
}

/// A rendered email.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email {
    pub subject: String,
    pub text: String,
    pub html: String,
}

#[derive(Template)]
#[template(path = "email/notice.txt")]
struct TextEmail<'a> {
    cards: &'a [Card],
    subscriptions: &'a [String],
    date: Option<Date>,
    unsubscribe_url: &'a str,
    manage_url: &'a str,
}

#[derive(Template)]
#[template(path = "email/notice.html")]
struct HtmlEmail<'a> {
    subject: &'a str,
    cards: &'a [Card],
    subscriptions: &'a [String],
    date: Option<Date>,
    unsubscribe_url: &'a str,
    manage_url: &'a str,
}

/// Longest subject line, in characters; long titles are cut.
const MAX_SUBJECT: usize = 140;

impl Notice<'_> {
    pub fn subject(&self) -> String {
        let subject = match (self.cards, self.date) {
            ([card], None) => format!("[paperstream] {}", card.title),
            (cards, Some(date)) => format!("[paperstream] {} new papers, {date}", cards.len()),
            (cards, None) => format!("[paperstream] {} new papers", cards.len()),
        };
        // Header injection: a title cannot carry a line break into the
        // subject (lettre encodes headers too; this keeps them one line).
        let subject = subject.replace(['\r', '\n'], " ");
        if subject.chars().count() > MAX_SUBJECT {
            let mut short: String = subject.chars().take(MAX_SUBJECT - 1).collect();
            short.push('…');
            short
        } else {
            subject
        }
    }

    pub fn email(&self) -> Result<Email, askama::Error> {
        let subject = self.subject();
        let text = TextEmail {
            cards: self.cards,
            subscriptions: &self.subscriptions,
            date: self.date,
            unsubscribe_url: &self.unsubscribe_url,
            manage_url: &self.manage_url,
        }
        .render()?;
        let html = HtmlEmail {
            subject: &subject,
            cards: self.cards,
            subscriptions: &self.subscriptions,
            date: self.date,
            unsubscribe_url: &self.unsubscribe_url,
            manage_url: &self.manage_url,
        }
        .render()?;
        Ok(Email {
            subject,
            text,
            html,
        })
    }

    /// The webhook body: Standard Webhooks' `type`, `timestamp`, `data`.
    pub fn webhook_payload(&self, now: OffsetDateTime) -> Value {
        let papers: Vec<Value> = self.cards.iter().map(paper_json).collect();
        let timestamp = now
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        match self.date {
            None if papers.len() == 1 => json!({
                "type": "paper.matched",
                "timestamp": timestamp,
                "data": {
                    "paper": papers[0],
                    "subscriptions": self.subscriptions,
                },
            }),
            date => json!({
                "type": "digest.ready",
                "timestamp": timestamp,
                "data": {
                    "date": date.map(|d| d.to_string()),
                    "papers": papers,
                },
            }),
        }
    }

    /// A Slack incoming-webhook message: plain `text` as the fallback, and
    /// blocks.
    pub fn slack_payload(&self) -> Value {
        let mut text = String::new();
        let mut blocks = Vec::new();
        if self.cards.len() > 1 {
            let heading = format!("{} new papers for you", self.cards.len());
            text.push_str(&heading);
            text.push('\n');
            blocks.push(json!({"type": "header", "text": {"type": "plain_text", "text": heading}}));
        }
        for card in self.cards {
            let mut section = format!(
                "*<{}|{}>*\n{}",
                slack_escape(&card.abs_url),
                slack_escape(&card.title),
                slack_escape(&card.authors.join(", "))
            );
            if let Some(summary) = &card.summary {
                section.push_str("\n>");
                section.push_str(&slack_escape(summary).replace('\n', "\n>"));
            }
            text.push_str(&format!("{} {}\n", card.title, card.abs_url));
            // Slack refuses a section longer than 3000 characters.
            let section: String = section.chars().take(2_900).collect();
            blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": section}}));
        }
        json!({ "text": text.trim_end(), "blocks": blocks })
    }
}

fn paper_json(card: &Card) -> Value {
    json!({
        "arxiv_id": card.arxiv_id,
        "version": card.version,
        "title": card.title,
        "authors": card.authors,
        "categories": card.categories,
        "abs_url": card.abs_url,
        "pdf_url": card.pdf_url,
        "summary": card.summary,
    })
}

/// Slack's three control characters in message text.
fn slack_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn card(title: &str) -> Card {
        Card {
            arxiv_id: "2611.00001".into(),
            version: 1,
            title: title.into(),
            abstract_text: "Abstract.".into(),
            authors: vec!["Ada Lovelace".into(), "Alan Turing".into()],
            categories: vec!["cs.LG".into()],
            primary_category: "cs.LG".into(),
            published_at: None,
            abs_url: "https://arxiv.org/abs/2611.00001v1".into(),
            pdf_url: None,
            summary: Some("It works <b>well</b> & fast.".into()),
            summary_provider: Some("ollama".into()),
        }
    }

    fn notice(cards: &[Card]) -> Notice<'_> {
        Notice {
            cards,
            subscriptions: vec!["graphs in cs.LG".into()],
            date: None,
            unsubscribe_url: "https://paperstream.example/unsubscribe/T".into(),
            manage_url: "https://paperstream.example/subscriptions".into(),
        }
    }

    #[test]
    fn emails_escape_html_and_carry_the_links() {
        let cards = [card("<script>alert(1)</script> Graphs\r\nBcc: x@evil")];
        let email = notice(&cards).email().expect("renders");
        assert!(!email.subject.contains('\n') && !email.subject.contains('\r'));
        assert!(
            email
                .html
                .contains("&#60;script&#62;alert(1)&#60;/script&#62;")
        );
        assert!(!email.html.contains("<script>"));
        assert!(
            email
                .html
                .contains("&#60;b&#62;well&#60;/b&#62; &#38; fast")
        );
        assert!(
            email.text.contains("<script>alert(1)</script> Graphs"),
            "text stays text"
        );
        for body in [&email.text, &email.html] {
            assert!(body.contains("https://paperstream.example/unsubscribe/T"));
            assert!(body.contains("Thank you to arXiv"));
        }
    }

    #[test]
    fn digests_webhooks_and_slack() {
        let cards = [card("One"), card("Two & <three>")];
        let mut digest = notice(&cards);
        digest.date = Some(time::macros::date!(2026 - 11 - 24));
        assert_eq!(digest.subject(), "[paperstream] 2 new papers, 2026-11-24");
        let payload = digest.webhook_payload(OffsetDateTime::UNIX_EPOCH);
        assert_eq!(payload["type"], "digest.ready");
        assert_eq!(payload["data"]["papers"].as_array().map(Vec::len), Some(2));
        let slack = digest.slack_payload();
        let blocks = slack["blocks"].to_string();
        assert!(blocks.contains("Two &amp; &lt;three&gt;"));
        let single = [card("Only")];
        let payload = notice(&single).webhook_payload(OffsetDateTime::UNIX_EPOCH);
        assert_eq!(payload["type"], "paper.matched");
        assert_eq!(payload["data"]["paper"]["title"], "Only");
        let long = [card(&"t".repeat(300))];
        assert_eq!(notice(&long).subject().chars().count(), MAX_SUBJECT);
    }
}
